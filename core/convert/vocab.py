"""A SentencePiece ``tokenizer.model`` as GGUF's vocabulary: pieces, scores, token types.

``load_spm_vocab(path)`` reads the model with the ``sentencepiece`` package and returns a
frozen ``SpmVocab``: every piece as UTF-8 bytes with its score and GGUF ``TokenType``,
the special ids (BOS, EOS, UNK, PAD), and Code Llama's fill-in-the-middle pieces
(``▁<PRE> ▁<SUF> ▁<MID> ▁<EOT>``) when the vocabulary has them.

The ``sentencepiece`` API says which pieces are unknown, control, byte or unused, but not
which are user-defined (like Code Llama's FIM pieces, which sentencepiece never splits);
that flag is read from the model's protobuf directly (``_piece_types``), so llama.cpp keeps
them whole too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import CheckpointError

__all__ = ["SpmVocab", "load_spm_vocab", "find_tokenizer", "FIM_PIECES"]

# Code Llama's infill pieces, by GGUF role.
FIM_PIECES = {"pre": "\u2581<PRE>", "suf": "\u2581<SUF>", "mid": "\u2581<MID>", "eot": "\u2581<EOT>"}

# sentencepiece's ModelProto.SentencePiece.Type values, which GGUF's TokenType mirrors.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


@dataclass(frozen=True)
class SpmVocab:
    tokens: tuple[bytes, ...]
    scores: tuple[float, ...]
    types: tuple[int, ...]
    bos_id: Optional[int]
    eos_id: Optional[int]
    unk_id: Optional[int]
    pad_id: Optional[int]
    fim: dict[str, int] = field(default_factory=dict)  # role ("pre", "suf", "mid", "eot") -> id

    @property
    def size(self) -> int:
        return len(self.tokens)


def find_tokenizer(folder: Path) -> Path:
    """``tokenizer.model`` in ``folder`` or, as Meta's download lays it out, its parent."""
    for candidate in (folder / "tokenizer.model", folder.parent / "tokenizer.model"):
        if candidate.is_file():
            return candidate
    raise CheckpointError(
        f"no tokenizer.model in {folder} or its parent folder; Meta's download puts it beside the "
        "model folders (Code Llama inside each): copy it into the model folder.")


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _skip(buf: bytes, pos: int, wire: int) -> int:
    if wire == 0:
        return _varint(buf, pos)[1]
    if wire == 1:
        return pos + 8
    if wire == 2:
        length, pos = _varint(buf, pos)
        return pos + length
    if wire == 5:
        return pos + 4
    raise ValueError(f"unsupported protobuf wire type {wire}")


def _piece_types(blob: bytes) -> list[int]:
    """The ``type`` of every piece in a serialized ModelProto (field 1, sub-field 3)."""
    types, pos = [], 0
    while pos < len(blob):
        key, pos = _varint(blob, pos)
        number, wire = key >> 3, key & 7
        if number == 1 and wire == 2:
            length, pos = _varint(blob, pos)
            end, piece_type, inner = pos + length, _NORMAL, pos
            while inner < end:
                sub_key, inner = _varint(blob, inner)
                if sub_key >> 3 == 3 and sub_key & 7 == 0:
                    piece_type, inner = _varint(blob, inner)
                else:
                    inner = _skip(blob, inner, sub_key & 7)
            types.append(piece_type)
            pos = end
        else:
            pos = _skip(blob, pos, wire)
    return types


def load_spm_vocab(path: Path) -> SpmVocab:
    """Read ``tokenizer.model``; a one-line ``CheckpointError`` if it is not SentencePiece."""
    import sentencepiece as spm

    blob = Path(path).read_bytes()
    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(blob)
        raw_types = _piece_types(blob)
    except (RuntimeError, OSError, ValueError, IndexError) as exc:
        hint = " (Llama 3's tiktoken tokenizer is not supported)" if blob[:4].isascii() and b" " in blob[:200] else ""
        reason = str(exc).splitlines()[0][:120].rstrip(".") if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} is not a SentencePiece model{hint}: {reason}.") from None
    n = sp.vocab_size()
    if len(raw_types) != n:
        raise CheckpointError(f"{path} is damaged: it lists {len(raw_types)} piece types for {n} pieces.")
    tokens, scores, types = [], [], []
    for i in range(n):
        tokens.append(sp.id_to_piece(i).encode("utf-8"))
        scores.append(float(sp.get_score(i)))
        if sp.is_unknown(i):
            types.append(_UNKNOWN)
        elif sp.is_control(i):
            types.append(_CONTROL)
        elif sp.is_byte(i):
            types.append(_BYTE)
        elif sp.is_unused(i):
            types.append(_UNUSED)
        elif raw_types[i] == _USER_DEFINED:
            types.append(_USER_DEFINED)
        else:
            types.append(_NORMAL)

    def special(value: int) -> Optional[int]:
        return value if 0 <= value < n else None

    fim = {}
    for role, piece in FIM_PIECES.items():
        token = sp.piece_to_id(piece)
        if 0 <= token < n and sp.id_to_piece(token) == piece:
            fim[role] = token
    return SpmVocab(tokens=tuple(tokens), scores=tuple(scores), types=tuple(types),
                    bos_id=special(sp.bos_id()), eos_id=special(sp.eos_id()), unk_id=special(sp.unk_id()),
                    pad_id=special(sp.pad_id()), fim=fim)
