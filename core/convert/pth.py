"""Reading PyTorch ``torch.save`` checkpoints without torch and without running pickled code.

A ``.pth`` written by ``torch.save`` is a zip archive: ``<prefix>/data.pkl`` (a pickle of
the state dict) and one stored, uncompressed member ``<prefix>/data/<key>`` per tensor
storage. ``load_pth(path)`` unpickles ``data.pkl`` with ``_SafeUnpickler``, whose
``find_class`` hands out only llamalab's own stand-ins for the few names ``torch.save``
uses for a dict of plain tensors:

    collections.OrderedDict                 the real class (a dict)
    torch._utils._rebuild_tensor_v2         -> a SourceTensor (no torch involved)
    torch._utils._rebuild_tensor            (older torch) likewise
    torch._utils._rebuild_parameter         an nn.Parameter: its tensor
    torch.BFloat16Storage, HalfStorage,     markers naming the element type
    FloatStorage

Any other global (``os.system``, ``builtins.eval``, a tensor subclass, ...) raises
``UnsafeCheckpointError`` before anything is called, so a planted ``__reduce__`` payload
never runs. ``persistent_load`` turns each storage reference into a location in the
memory-mapped zip: the storage's member must be stored uncompressed and lie inside the
file, or ``CheckpointError`` says the file is damaged.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import CheckpointError, UnsafeCheckpointError
from .source import SOURCE_DTYPES, MappedFile, SourceTensor

__all__ = ["load_pth", "PthCheckpoint"]

_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # a zip member's local file header (30 bytes)


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for ``torch.<X>Storage``: only its element type matters."""

    dtype: str


@dataclass(frozen=True)
class _Storage:
    offset: int  # byte offset of the storage's data in the file
    nbytes: int
    dtype: str


_STORAGE_TYPES = {"BFloat16Storage": "BF16", "HalfStorage": "F16", "FloatStorage": "F32"}
_UNSUPPORTED_STORAGES = {"DoubleStorage", "LongStorage", "IntStorage", "ShortStorage", "CharStorage",
                         "ByteStorage", "BoolStorage", "ComplexFloatStorage", "ComplexDoubleStorage"}


class PthCheckpoint:
    """The tensors of one ``.pth`` file; keeps the file mapped until ``close``."""

    def __init__(self, path: Path, tensors: dict[str, SourceTensor], mapped: MappedFile) -> None:
        self.path = path
        self.tensors = tensors
        self._mapped = mapped

    def close(self) -> None:
        self._mapped.close()

    def __enter__(self) -> "PthCheckpoint":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, path: Path, storage: Callable[[str, str], _Storage],
                 mapped: MappedFile) -> None:
        super().__init__(io.BytesIO(data))
        self._path = path
        self._storage = storage
        self._mapped = mapped

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return self._rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return self._rebuild_parameter
        if module == "torch" and name in _STORAGE_TYPES:
            return _StorageType(_STORAGE_TYPES[name])
        if module == "torch" and name in _UNSUPPORTED_STORAGES:
            raise CheckpointError(f"{self._path.name} holds {name} tensors; llamalab converts bf16, f16 "
                                  "and f32 model weights only.")
        raise UnsafeCheckpointError(
            f"{self._path.name} asks to load '{module}.{name}', which a checkpoint of plain tensors never "
            "needs; it was not loaded and nothing in the file was run. Get the checkpoint from Meta or "
            "Hugging Face again.")

    def persistent_load(self, pid: Any) -> Any:
        if (not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage"
                or not isinstance(pid[1], _StorageType) or not isinstance(pid[2], str)):
            raise UnsafeCheckpointError(
                f"{self._path.name} refers to an object llamalab does not know ({str(pid)[:60]}); "
                "it was not loaded.")
        return self._storage(pid[2], pid[1].dtype)

    def _rebuild_tensor(self, storage: Any, storage_offset: Any, size: Any, stride: Any,
                        *_rest: Any) -> SourceTensor:
        if not isinstance(storage, _Storage):
            raise UnsafeCheckpointError(f"{self._path.name} builds a tensor from something that is not "
                                        "a storage; it was not loaded.")
        ints = (storage_offset, *size, *stride)
        if not all(isinstance(v, int) and v >= 0 for v in ints) or len(size) != len(stride):
            raise CheckpointError(f"{self._path.name} has a tensor with an invalid shape {size!r}.")
        tensor = SourceTensor(file=self._mapped, offset=storage.offset + storage_offset * _itemsize(storage),
                              shape=tuple(size), strides=tuple(stride), dtype=storage.dtype,
                              origin=self._path.name)
        if tensor.numel and storage_offset + tensor.span > storage.nbytes // _itemsize(storage):
            raise CheckpointError(f"{self._path.name} is damaged: a tensor runs past the end of its storage; "
                                  "download it again.")
        return tensor

    @staticmethod
    def _rebuild_parameter(data: Any, *_rest: Any) -> Any:
        return data


def _itemsize(storage: _Storage) -> int:
    return SOURCE_DTYPES[storage.dtype].itemsize


def _member_data_offset(path: Path, handle: Any, info: zipfile.ZipInfo) -> int:
    handle.seek(info.header_offset)
    raw = handle.read(_LOCAL_HEADER.size)
    if len(raw) != _LOCAL_HEADER.size or raw[:4] != b"PK\x03\x04":
        raise CheckpointError(f"{path.name} is damaged (bad zip entry {info.filename}); download it again.")
    fields = _LOCAL_HEADER.unpack(raw)
    return info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10]


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        with open(path, "rb") as handle:
            head = handle.read(4)
        if head[:2] == b"PK":
            raise CheckpointError(f"{path.name} is truncated (its zip directory is missing); "
                                  "download it again.") from None
        if head[:1] == b"\x80":
            raise CheckpointError(f"{path.name} is in PyTorch's legacy (pre-1.6) format, which llamalab "
                                  "does not read; re-save it with a current torch.save.") from None
        raise CheckpointError(f"{path.name} is not a PyTorch checkpoint (it starts with {head!r}).") from None


def load_pth(path: Path) -> PthCheckpoint:
    """Open ``path`` and return its tensors; nothing is read into memory but the pickle."""
    path = Path(path)
    archive = _open_zip(path)
    try:
        infos = {info.filename: info for info in archive.infolist()}
        pickles = [name for name in infos if name.endswith("/data.pkl") or name == "data.pkl"]
        if len(pickles) != 1:
            raise CheckpointError(f"{path.name} is not a torch.save checkpoint (no single data.pkl inside).")
        prefix = pickles[0][: -len("data.pkl")]
        order = infos.get(prefix + "byteorder")
        if order is not None and archive.read(order).strip() not in (b"little", b""):
            raise CheckpointError(f"{path.name} was saved on a big-endian machine; llamalab reads "
                                  "little-endian checkpoints only.")
        try:
            data = archive.read(pickles[0])
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise CheckpointError(f"{path.name} is damaged ({exc}); download it again.") from None
        mapped = MappedFile(path)
        handle = archive.fp

        def storage(key: str, dtype: str) -> _Storage:
            info = infos.get(f"{prefix}data/{key}")
            if info is None:
                raise CheckpointError(f"{path.name} is damaged: storage {key} is missing; download it again.")
            if info.compress_type != zipfile.ZIP_STORED:
                raise CheckpointError(f"{path.name} stores tensor data compressed, which torch.save never "
                                      "does; re-save the checkpoint with torch.save.")
            offset = _member_data_offset(path, handle, info)
            if offset + info.file_size > mapped.size:
                raise CheckpointError(f"{path.name} is truncated: storage {key} ends at byte "
                                      f"{offset + info.file_size:,} of {mapped.size:,}; download it again.")
            return _Storage(offset=offset, nbytes=info.file_size, dtype=dtype)

        try:
            state = _SafeUnpickler(data, path, storage, mapped).load()
        except (CheckpointError, UnsafeCheckpointError):
            mapped.close()
            raise
        except Exception as exc:  # any malformed pickle: translate at the boundary
            mapped.close()
            raise CheckpointError(f"{path.name} is damaged ({type(exc).__name__}: {exc}); "
                                  "download it again.") from None
    finally:
        archive.close()
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # training checkpoints nest the weights
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, SourceTensor) for k, v in state.items()):
        mapped.close()
        raise CheckpointError(f"{path.name} does not hold a state dict of tensors.")
    tensors = {name: SourceTensor(file=t.file, offset=t.offset, shape=t.shape, strides=t.strides,
                                  dtype=t.dtype, origin=f"{path.name}: {name}") for name, t in state.items()}
    return PthCheckpoint(path, tensors, mapped)
