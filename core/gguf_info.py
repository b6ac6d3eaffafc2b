"""What a GGUF file says about itself.

``read_gguf_info(path)`` validates the file (magic, truncation, architecture) and returns
a frozen ``GGUFInfo``: architecture, quantization, context length, layer and head counts,
chat template, special tokens and every tensor's type, shape and size (which the VRAM
estimator in ``hardware`` needs). It never loads weights.

The header is parsed here in one pass over a memory map, with the ``gguf`` package's
constants (value types, quantization block sizes, ``Keys``). ``gguf.GGUFReader`` builds a
numpy view for every vocabulary string, which takes seconds for a 32k-49k vocabulary;
this reader skips the arrays it does not need and takes milliseconds, which matters
because every engine load and store registration reads the header. A test checks that
both readers agree on the demo model.

A crafted header cannot become a memory bomb or a crash: counts (keys, tensors, array items,
string bytes) are bounded by the bytes left in the file, arrays nest at most
``_Header.MAX_DEPTH`` deep, tensors have at most ``_Header.MAX_DIMS`` dimensions, the
alignment must be a power of two, and every field llamalab reads must have its expected
type; any other malformation (``TypeError``, ``ZeroDivisionError``, ``RecursionError``...)
becomes one ``InvalidModelFileError`` line.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import InvalidModelFileError, ModelNotFoundError, UnsupportedModelError

__all__ = ["GGUFInfo", "TensorInfo", "read_gguf_info", "GGUF_MAGIC", "is_gguf", "quantization_label"]

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: str  # e.g. "Q4_K", "F16"
    shape: tuple[int, ...]  # GGUF order: fastest-varying dimension first
    n_bytes: int


@dataclass(frozen=True)
class GGUFInfo:
    path: Path
    size_bytes: int
    architecture: str
    name: str
    quantization: str
    context_length: int
    block_count: int
    embedding_length: int
    head_count: int
    head_count_kv: int
    vocab_size: int
    chat_template: Optional[str]
    bos_token_id: Optional[int]
    eos_token_id: Optional[int]
    add_bos_token: Optional[bool]
    tokenizer_model: Optional[str]
    license: Optional[str]
    # Fill-in-the-middle token ids (Code Llama's ``▁<PRE> ▁<SUF> ▁<MID> ▁<EOT>``); None when absent.
    fim_pre_id: Optional[int] = None
    fim_suf_id: Optional[int] = None
    fim_mid_id: Optional[int] = None
    eot_id: Optional[int] = None
    tensors: tuple[TensorInfo, ...] = field(repr=False, default=())

    @property
    def head_dim(self) -> int:
        return self.embedding_length // max(1, self.head_count)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)


def is_gguf(path: os.PathLike[str] | str) -> bool:
    """True when the file starts with GGUF's magic bytes."""
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == GGUF_MAGIC
    except OSError:
        return False


def quantization_label(file_type: Optional[int], tensor_types: Counter[str]) -> str:
    """``general.file_type`` as llama.cpp names it (``Q4_K_M``), else the commonest tensor type."""
    import gguf

    if file_type is not None:
        try:
            name = gguf.LlamaFileType(file_type).name
        except ValueError:
            name = ""
        if name:
            return name.removeprefix("MOSTLY_").removeprefix("ALL_")
    if tensor_types:
        return tensor_types.most_common(1)[0][0]
    return "unknown"


class _Header:
    """Key-value metadata and tensor infos of a GGUF file, read from a memory map."""

    _SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                10: "<Q", 11: "<q", 12: "<d"}
    _STRING, _ARRAY = 8, 9
    KEEP_ARRAYS = 64  # arrays longer than this (vocabularies, merges) are skipped; their length is kept
    MAX_DEPTH = 2  # an array of arrays at most
    MAX_DIMS = 8  # ggml has 4

    def __init__(self, buf: Any) -> None:
        self.buf = buf
        self.pos = 0
        self.fields: dict[str, Any] = {}
        self.array_lengths: dict[str, int] = {}
        self.tensors: list[tuple[str, tuple[int, ...], int, int]] = []  # name, shape, type, offset

    def _unpack(self, fmt: str) -> Any:
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def _count(self, count: int, item_bytes: int, what: str) -> int:
        """``count`` items of at least ``item_bytes`` each, refused when they cannot fit in the file."""
        if count * item_bytes > len(self.buf) - self.pos:
            raise ValueError(f"{what} claims {count:,} items, more than the file holds")
        return count

    def _string(self) -> str:
        length = self._count(self._unpack("<Q"), 1, "a string")
        raw = bytes(self.buf[self.pos:self.pos + length])
        if len(raw) != length:
            raise ValueError("string runs past the end of the file")
        self.pos += length
        return raw.decode("utf-8", errors="replace")

    def _skip_strings(self, count: int) -> None:
        for _ in range(count):
            self.pos += 8 + self._count(struct.unpack_from("<Q", self.buf, self.pos)[0], 1, "a string")
            if self.pos > len(self.buf):
                raise ValueError("a string runs past the end of the file")

    def _value(self, value_type: int, key: str, depth: int = 0) -> Any:
        if value_type in self._SCALARS:
            return self._unpack(self._SCALARS[value_type])
        if value_type == self._STRING:
            return self._string()
        if value_type != self._ARRAY:
            raise ValueError(f"unknown value type {value_type} for {key[:60]}")
        if depth >= self.MAX_DEPTH:
            raise ValueError(f"arrays nested too deep in {key[:60]}")
        item_type = self._unpack("<I")
        item_bytes = struct.calcsize(self._SCALARS[item_type]) if item_type in self._SCALARS else 8
        count = self._count(self._unpack("<Q"), item_bytes, key[:60])
        if depth == 0:
            self.array_lengths[key] = count
        if count > self.KEEP_ARRAYS:
            if item_type == self._STRING:
                self._skip_strings(count)
            elif item_type in self._SCALARS:
                self.pos += count * item_bytes
            else:
                raise ValueError(f"unsupported nested array in {key[:60]}")
            return None
        return [self._value(item_type, key, depth + 1) for _ in range(count)]

    def parse(self) -> int:
        """Read everything up to the tensor data; return where the data starts."""
        magic, version = struct.unpack_from("<4sI", self.buf, 0)
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not supported (2 and 3 are)")
        self.pos = 8
        n_tensors, n_kv = self._unpack("<Q"), self._unpack("<Q")
        for _ in range(self._count(n_kv, 12, "the key-value table")):
            key = self._string()
            self.fields[key] = self._value(self._unpack("<I"), key)
        for _ in range(self._count(n_tensors, 24, "the tensor table")):
            name = self._string()
            n_dims = self._unpack("<I")
            if n_dims > self.MAX_DIMS:
                raise ValueError(f"tensor {name[:60]} has {n_dims} dimensions")
            shape = tuple(self._unpack("<Q") for _ in range(n_dims))
            self.tensors.append((name, shape, self._unpack("<I"), self._unpack("<Q")))
        alignment = self.fields.get("general.alignment", 32)
        if type(alignment) is not int or alignment < 1 or alignment & (alignment - 1) or alignment > 1 << 20:
            raise ValueError(f"general.alignment {str(alignment)[:20]} is not a power of two")
        return -(-self.pos // alignment) * alignment


def _read_header(path: Path) -> tuple[_Header, int]:
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        header = _Header(buf)
        data_start = header.parse()
        header.buf = None
    return header, data_start


def _tensor_infos(header: _Header, data_start: int) -> tuple[tuple[TensorInfo, ...], int]:
    import gguf

    tensors, data_end = [], data_start
    for name, shape, type_id, offset in header.tensors:
        qtype = gguf.GGMLQuantizationType(type_id)
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        n_elements = 1
        for dim in shape:
            n_elements *= dim
        n_bytes = n_elements // block * type_size
        tensors.append(TensorInfo(name=name, ggml_type=qtype.name, shape=shape, n_bytes=n_bytes))
        data_end = max(data_end, data_start + offset + n_bytes)
    return tuple(tensors), data_end


def _known_architectures() -> set[str]:
    import gguf

    return set(gguf.MODEL_ARCH_NAMES.values())


def read_gguf_info(path: os.PathLike[str] | str) -> GGUFInfo:
    """Read and validate a GGUF file's metadata; raise a one-line, fixable error otherwise."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(f"{path} does not exist; check the path or run `llamalab models list`.")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head != GGUF_MAGIC:
        hint = "it looks like a PyTorch checkpoint; convert it first" if head[:2] == b"PK" else \
            "convert the model to GGUF or download a .gguf file"
        raise InvalidModelFileError(f"{path.name} is not a GGUF file (it starts with {head!r}): {hint}.")

    import gguf

    try:
        header, data_start = _read_header(path)
        tensors, data_end = _tensor_infos(header, data_start)
    except _MALFORMED as exc:
        raise InvalidModelFileError(_damaged(path, exc)) from None
    if data_end > size:
        raise InvalidModelFileError(
            f"{path.name} is truncated: it is {size:,} bytes but its tensors end at byte {data_end:,}; "
            "download it again."
        )
    try:
        return _info(path, size, header, tensors, gguf)
    except _MALFORMED as exc:
        raise InvalidModelFileError(_damaged(path, exc)) from None


# What a malformed header can raise while it is parsed or read; all become InvalidModelFileError.
_MALFORMED = (ValueError, KeyError, IndexError, TypeError, AttributeError, ArithmeticError, struct.error,
              RecursionError, MemoryError)


def _damaged(path: Path, exc: BaseException) -> str:
    detail = " ".join(str(exc).split())[:100] or type(exc).__name__
    return f"{path.name} is truncated or damaged ({detail}); download it again."


def _typed(fields: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    """``fields[key]`` when it has type ``kind`` (bools are not ints), None when absent."""
    value = fields.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise TypeError(f"{key} is a {type(value).__name__}")
    return value


def _info(path: Path, size: int, header: _Header, tensors: tuple[TensorInfo, ...], gguf: Any) -> GGUFInfo:
    fields = header.fields

    arch = _typed(fields, gguf.Keys.General.ARCHITECTURE, str)
    if not arch:
        raise InvalidModelFileError(f"{path.name} has no general.architecture key; it is not a model GGUF.")
    if arch not in _known_architectures():
        raise UnsupportedModelError(
            f"{path.name} is a '{arch}' model, an architecture llama.cpp cannot run; "
            "use a GGUF of a supported architecture (llama, mistral, qwen2, ...)."
        )

    def arch_key(template: str) -> Any:
        value = fields.get(template.format(arch=arch))
        value = max(value) if isinstance(value, list) and value else value  # per-layer arrays
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise TypeError(f"{template.format(arch=arch)} is not a number")
        return value

    keys = gguf.Keys
    vocab = arch_key(keys.LLM.VOCAB_SIZE) or header.array_lengths.get(keys.Tokenizer.LIST, 0)
    head_count = arch_key(keys.Attention.HEAD_COUNT) or 0
    return GGUFInfo(
        path=path,
        size_bytes=size,
        architecture=str(arch),
        name=_typed(fields, keys.General.NAME, str) or path.stem,
        quantization=quantization_label(_typed(fields, keys.General.FILE_TYPE, int),
                                        Counter(t.ggml_type for t in tensors)),
        context_length=int(arch_key(keys.LLM.CONTEXT_LENGTH) or 0),
        block_count=int(arch_key(keys.LLM.BLOCK_COUNT) or 0),
        embedding_length=int(arch_key(keys.LLM.EMBEDDING_LENGTH) or 0),
        head_count=int(head_count),
        head_count_kv=int(arch_key(keys.Attention.HEAD_COUNT_KV) or head_count),
        vocab_size=int(vocab),
        chat_template=_typed(fields, keys.Tokenizer.CHAT_TEMPLATE, str),
        bos_token_id=_typed(fields, keys.Tokenizer.BOS_ID, int),
        eos_token_id=_typed(fields, keys.Tokenizer.EOS_ID, int),
        add_bos_token=_typed(fields, keys.Tokenizer.ADD_BOS, bool),
        tokenizer_model=_typed(fields, keys.Tokenizer.MODEL, str),
        license=_typed(fields, keys.General.LICENSE, str),
        fim_pre_id=_typed(fields, keys.Tokenizer.FIM_PRE_ID, int),
        fim_suf_id=_typed(fields, keys.Tokenizer.FIM_SUF_ID, int),
        fim_mid_id=_typed(fields, keys.Tokenizer.FIM_MID_ID, int),
        eot_id=_typed(fields, keys.Tokenizer.EOT_ID, int),
        tensors=tensors,
    )
