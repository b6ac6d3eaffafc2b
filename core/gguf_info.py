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

    def _string(self) -> str:
        length = self._unpack("<Q")
        raw = bytes(self.buf[self.pos:self.pos + length])
        if len(raw) != length:
            raise ValueError("string runs past the end of the file")
        self.pos += length
        return raw.decode("utf-8", errors="replace")

    def _skip_strings(self, count: int) -> None:
        for _ in range(count):
            self.pos += 8 + struct.unpack_from("<Q", self.buf, self.pos)[0]

    def _value(self, value_type: int, key: str) -> Any:
        if value_type in self._SCALARS:
            return self._unpack(self._SCALARS[value_type])
        if value_type == self._STRING:
            return self._string()
        if value_type != self._ARRAY:
            raise ValueError(f"unknown value type {value_type} for {key}")
        item_type, count = self._unpack("<I"), self._unpack("<Q")
        self.array_lengths[key] = count
        if count > self.KEEP_ARRAYS:
            if item_type == self._STRING:
                self._skip_strings(count)
            elif item_type in self._SCALARS:
                self.pos += count * struct.calcsize(self._SCALARS[item_type])
            else:
                raise ValueError(f"unsupported nested array in {key}")
            return None
        return [self._value(item_type, key) for _ in range(count)]

    def parse(self) -> int:
        """Read everything up to the tensor data; return where the data starts."""
        magic, version = struct.unpack_from("<4sI", self.buf, 0)
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not supported (2 and 3 are)")
        self.pos = 8
        n_tensors, n_kv = self._unpack("<Q"), self._unpack("<Q")
        for _ in range(n_kv):
            key = self._string()
            self.fields[key] = self._value(self._unpack("<I"), key)
        for _ in range(n_tensors):
            name = self._string()
            n_dims = self._unpack("<I")
            shape = tuple(self._unpack("<Q") for _ in range(n_dims))
            self.tensors.append((name, shape, self._unpack("<I"), self._unpack("<Q")))
        alignment = int(self.fields.get("general.alignment") or 32)
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
    except (ValueError, KeyError, struct.error, OverflowError, MemoryError) as exc:
        raise InvalidModelFileError(
            f"{path.name} is truncated or damaged ({exc}); download it again."
        ) from None
    if data_end > size:
        raise InvalidModelFileError(
            f"{path.name} is truncated: it is {size:,} bytes but its tensors end at byte {data_end:,}; "
            "download it again."
        )
    fields = header.fields

    arch = fields.get(gguf.Keys.General.ARCHITECTURE)
    if not arch:
        raise InvalidModelFileError(f"{path.name} has no general.architecture key; it is not a model GGUF.")
    if arch not in _known_architectures():
        raise UnsupportedModelError(
            f"{path.name} is a '{arch}' model, an architecture llama.cpp cannot run; "
            "use a GGUF of a supported architecture (llama, mistral, qwen2, ...)."
        )

    def arch_key(template: str) -> Any:
        value = fields.get(template.format(arch=arch))
        return max(value) if isinstance(value, list) and value else value  # per-layer arrays

    keys = gguf.Keys
    vocab = arch_key(keys.LLM.VOCAB_SIZE) or header.array_lengths.get(keys.Tokenizer.LIST, 0)
    head_count = arch_key(keys.Attention.HEAD_COUNT) or 0
    return GGUFInfo(
        path=path,
        size_bytes=size,
        architecture=str(arch),
        name=str(fields.get(keys.General.NAME) or path.stem),
        quantization=quantization_label(fields.get(keys.General.FILE_TYPE),
                                        Counter(t.ggml_type for t in tensors)),
        context_length=int(arch_key(keys.LLM.CONTEXT_LENGTH) or 0),
        block_count=int(arch_key(keys.LLM.BLOCK_COUNT) or 0),
        embedding_length=int(arch_key(keys.LLM.EMBEDDING_LENGTH) or 0),
        head_count=int(head_count),
        head_count_kv=int(arch_key(keys.Attention.HEAD_COUNT_KV) or head_count),
        vocab_size=int(vocab),
        chat_template=fields.get(keys.Tokenizer.CHAT_TEMPLATE),
        bos_token_id=fields.get(keys.Tokenizer.BOS_ID),
        eos_token_id=fields.get(keys.Tokenizer.EOS_ID),
        add_bos_token=fields.get(keys.Tokenizer.ADD_BOS),
        tokenizer_model=fields.get(keys.Tokenizer.MODEL),
        license=fields.get(keys.General.LICENSE),
        fim_pre_id=fields.get(keys.Tokenizer.FIM_PRE_ID),
        fim_suf_id=fields.get(keys.Tokenizer.FIM_SUF_ID),
        fim_mid_id=fields.get(keys.Tokenizer.FIM_MID_ID),
        eot_id=fields.get(keys.Tokenizer.EOT_ID),
        tensors=tensors,
    )
