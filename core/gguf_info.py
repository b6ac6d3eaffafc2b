"""What a GGUF file says about itself, read with the ``gguf`` package's reader.

``read_gguf_info(path)`` validates the file (magic, truncation, architecture) and returns
a frozen ``GGUFInfo``: architecture, quantization, context length, layer and head counts,
chat template, special tokens and every tensor's type, shape and size (which the VRAM
estimator in ``hardware`` needs). It never loads weights: the reader memory-maps the file.
"""

from __future__ import annotations

import os
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


def _value(reader: Any, key: str) -> Any:
    field_ = reader.fields.get(key)
    if field_ is None:
        return None
    return field_.contents()


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
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as exc:  # the reader raises ValueError, IndexError, struct errors...
        raise InvalidModelFileError(
            f"{path.name} is truncated or damaged ({type(exc).__name__}: {exc}); download it again."
        ) from None
    tensors = tuple(
        TensorInfo(
            name=t.name,
            ggml_type=gguf.GGMLQuantizationType(t.tensor_type).name,
            shape=tuple(int(x) for x in t.shape),
            n_bytes=int(t.n_bytes),
        )
        for t in reader.tensors
    )
    data_end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if data_end > size:
        raise InvalidModelFileError(
            f"{path.name} is truncated: it is {size:,} bytes but its tensors end at byte {data_end:,}; "
            "download it again."
        )

    arch = _value(reader, gguf.Keys.General.ARCHITECTURE)
    if not arch:
        raise InvalidModelFileError(f"{path.name} has no general.architecture key; it is not a model GGUF.")
    if arch not in _known_architectures():
        raise UnsupportedModelError(
            f"{path.name} is a '{arch}' model, an architecture llama.cpp cannot run; "
            "use a GGUF of a supported architecture (llama, mistral, qwen2, ...)."
        )

    def arch_key(template: str) -> Any:
        return _value(reader, template.format(arch=arch))

    keys = gguf.Keys
    tokens = reader.fields.get(keys.Tokenizer.LIST)
    vocab = arch_key(keys.LLM.VOCAB_SIZE) or (len(tokens.data) if tokens is not None else 0)
    head_count = arch_key(keys.Attention.HEAD_COUNT) or 0
    return GGUFInfo(
        path=path,
        size_bytes=size,
        architecture=str(arch),
        name=str(_value(reader, keys.General.NAME) or path.stem),
        quantization=quantization_label(_value(reader, keys.General.FILE_TYPE),
                                        Counter(t.ggml_type for t in tensors)),
        context_length=int(arch_key(keys.LLM.CONTEXT_LENGTH) or 0),
        block_count=int(arch_key(keys.LLM.BLOCK_COUNT) or 0),
        embedding_length=int(arch_key(keys.LLM.EMBEDDING_LENGTH) or 0),
        head_count=int(head_count),
        head_count_kv=int(arch_key(keys.Attention.HEAD_COUNT_KV) or head_count),
        vocab_size=int(vocab),
        chat_template=_value(reader, keys.Tokenizer.CHAT_TEMPLATE),
        bos_token_id=_value(reader, keys.Tokenizer.BOS_ID),
        eos_token_id=_value(reader, keys.Tokenizer.EOS_ID),
        add_bos_token=_value(reader, keys.Tokenizer.ADD_BOS),
        tokenizer_model=_value(reader, keys.Tokenizer.MODEL),
        license=_value(reader, keys.General.LICENSE),
        tensors=tensors,
    )
