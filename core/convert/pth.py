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

A crafted file must not turn into a memory or disk bomb either, so reading is bounded:

- every member is stored, never compressed (``torch.save`` never compresses), and
  ``data.pkl`` is at most ``MAX_PICKLE_BYTES``: nothing is inflated into memory;
- the pickle may call its allowed globals at most ``MAX_PICKLE_OBJECTS`` times and copy at
  most ``MAX_PICKLE_ELEMENTS`` items into dicts (``OrderedDict(big)`` repeated), and may not
  set state (``BUILD``) on anything but a dict, whose state is dropped;
- every tensor has at most ``MAX_DIMS`` dimensions, strides that never reuse an element
  (no stride 0 over a broadcast storage), lies inside its storage, and all tensors together
  claim at most twice the file's bytes (tied weights share one storage); this is checked
  before anything is planned or written.
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

__all__ = ["load_pth", "PthCheckpoint", "MAX_PICKLE_BYTES", "MAX_PICKLE_OBJECTS", "MAX_PICKLE_ELEMENTS",
           "MAX_DIMS"]

MAX_PICKLE_BYTES = 16 << 20  # a 70B shard's data.pkl is about 100 KB
MAX_PICKLE_OBJECTS = 200_000  # calls of allowed globals, storages included
MAX_PICKLE_ELEMENTS = 1_000_000  # items copied into dicts by those calls
MAX_DIMS = 8
_SMALL_MEMBER = 64  # the "byteorder" member
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # a zip member's local file header (30 bytes)


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for ``torch.<X>Storage``: only its element type matters."""

    dtype: str

    def __setstate__(self, state: Any) -> None:
        _refuse_state(self)


@dataclass(frozen=True)
class _Storage:
    offset: int  # byte offset of the storage's data in the file
    nbytes: int
    dtype: str
    key: str = ""

    def __setstate__(self, state: Any) -> None:
        _refuse_state(self)


@dataclass(frozen=True)
class _TensorRef:
    """What ``_rebuild_tensor`` returns: checked and turned into a ``SourceTensor`` after unpickling."""

    storage: _Storage
    storage_offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def __setstate__(self, state: Any) -> None:
        _refuse_state(self)


class _StateDict(collections.OrderedDict):
    """``collections.OrderedDict`` as the pickle sees it: copies count against the budget and the
    attributes ``torch.save`` attaches (``_metadata``) are dropped instead of set."""

    _budget: "_Budget"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._budget.spend(1, sum(_length(a) for a in args) + len(kwargs))
        super().__init__(*args, **kwargs)

    def __setstate__(self, state: Any) -> None:
        pass


class _Budget:
    """How much the pickle may still build; raises ``UnsafeCheckpointError`` when spent."""

    def __init__(self, name: str) -> None:
        self.name, self.objects, self.elements = name, 0, 0

    def spend(self, objects: int, elements: int = 0) -> None:
        self.objects += objects
        self.elements += elements
        if self.objects > MAX_PICKLE_OBJECTS or self.elements > MAX_PICKLE_ELEMENTS:
            raise UnsafeCheckpointError(
                f"{self.name} builds more objects than a checkpoint of plain tensors ever does (over "
                f"{MAX_PICKLE_OBJECTS:,} objects or {MAX_PICKLE_ELEMENTS:,} copied items); it was not loaded. "
                "Get the checkpoint from Meta or Hugging Face again.")


def _length(value: Any) -> int:
    try:
        return len(value)
    except TypeError:
        return 1


class _Refused(Exception):
    """A refusal raised where the file's name is not known; ``load_pth`` adds it."""


def _refuse_state(obj: object) -> None:
    raise _Refused(f"its pickle sets the state of a {type(obj).__name__.lstrip('_')}, which torch.save never "
                   "does; it was not loaded. Get the checkpoint from Meta or Hugging Face again.")


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
    def __init__(self, data: bytes, path: Path, storage: Callable[[str, str], _Storage]) -> None:
        super().__init__(io.BytesIO(data))
        self._path = path
        self._storage = storage
        self._budget = _Budget(path.name)
        self._dict_type = type("OrderedDict", (_StateDict,), {"_budget": self._budget})

    def find_class(self, module: str, name: str) -> Any:
        self._budget.spend(1)
        if module == "collections" and name == "OrderedDict":
            return self._dict_type
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
        self._budget.spend(1)
        if (not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage"
                or not isinstance(pid[1], _StorageType) or not isinstance(pid[2], str)):
            raise UnsafeCheckpointError(
                f"{self._path.name} refers to an object llamalab does not know ({str(pid)[:60]}); "
                "it was not loaded.")
        return self._storage(pid[2], pid[1].dtype)

    def _rebuild_tensor(self, storage: Any, storage_offset: Any, size: Any, stride: Any,
                        *_rest: Any) -> _TensorRef:
        self._budget.spend(1)
        if not isinstance(storage, _Storage):
            raise UnsafeCheckpointError(f"{self._path.name} builds a tensor from something that is not "
                                        "a storage; it was not loaded.")
        if (not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list))
                or len(size) > MAX_DIMS or len(size) != len(stride)):
            raise CheckpointError(f"{self._path.name} has a tensor with an invalid shape {str(size)[:60]}.")
        return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))

    def _rebuild_parameter(self, data: Any, *_rest: Any) -> Any:
        self._budget.spend(1)
        return data


def _source_tensor(ref: _TensorRef, mapped: MappedFile, origin: str) -> SourceTensor:
    """``ref`` as a ``SourceTensor`` once its shape, strides and offset fit its storage."""
    storage, offset, size, stride = ref.storage, ref.storage_offset, ref.size, ref.stride
    if not all(type(v) is int and v >= 0 for v in (offset, *size, *stride)):
        raise CheckpointError(f"{origin} has an invalid shape {size!r} or strides {stride!r}; "
                              "the checkpoint is damaged: download it again.")
    itemsize = _itemsize(storage)
    tensor = SourceTensor(file=mapped, offset=storage.offset + offset * itemsize, shape=size, strides=stride,
                          dtype=storage.dtype, origin=origin)
    if tensor.numel and not _non_overlapping(size, stride):
        raise UnsafeCheckpointError(
            f"{origin} has strides {stride} that reuse stored values for shape {size} (stride 0 or overlapping "
            "rows), which real weights never do; the checkpoint was not loaded.")
    if tensor.numel and offset + tensor.span > storage.nbytes // itemsize:
        raise CheckpointError(f"{origin.split(':')[0]} is damaged: a tensor runs past the end of its storage "
                              f"({origin}); download it again.")
    return tensor


def _non_overlapping(size: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """True when no two indices of the tensor address the same element."""
    reach = 0  # the furthest element reachable through the dimensions seen so far
    for d, s in sorted(((d, s) for d, s in zip(size, stride) if d > 1), key=lambda ds: ds[1]):
        if s <= reach:
            return False
        reach += s * (d - 1)
    return True


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


def _read_small_member(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """A member read whole, only when it is stored (never inflated) and at most ``limit`` bytes."""
    if info.compress_type != zipfile.ZIP_STORED:
        raise CheckpointError(f"{path.name} holds a compressed {info.filename}, which torch.save never writes; "
                              "it was not read. Re-save the checkpoint with torch.save.")
    if info.file_size > limit or info.compress_size > limit:
        raise CheckpointError(f"{path.name} holds a {info.file_size:,}-byte {info.filename}, more than a "
                              f"checkpoint's ({limit:,} at most); it was not read. Re-save it with torch.save.")
    try:
        return archive.read(info)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CheckpointError(f"{path.name} is damaged ({exc}); download it again.") from None


def _tensors_of(path: Path, state: Any, mapped: MappedFile) -> dict[str, SourceTensor]:
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # training checkpoints nest the weights
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, _TensorRef) for k, v in state.items()):
        raise CheckpointError(f"{path.name} does not hold a state dict of tensors.")
    tensors = {name: _source_tensor(ref, mapped, f"{path.name}: {name}") for name, ref in state.items()}
    claimed = sum(t.numel * SOURCE_DTYPES[t.dtype].itemsize for t in tensors.values())
    if claimed > 2 * mapped.size + (1 << 20):
        raise UnsafeCheckpointError(
            f"{path.name} is {mapped.size:,} bytes but its tensors claim {claimed:,} (many tensors reading the "
            "same stored values), which real weights never do; the checkpoint was not loaded.")
    return tensors


def load_pth(path: Path) -> PthCheckpoint:
    """Open ``path`` and return its tensors; nothing is read into memory but the pickle."""
    path = Path(path)
    archive = _open_zip(path)
    mapped: MappedFile | None = None
    try:
        infos = {info.filename: info for info in archive.infolist()}
        pickles = [name for name in infos if name.endswith("/data.pkl") or name == "data.pkl"]
        if len(pickles) != 1:
            raise CheckpointError(f"{path.name} is not a torch.save checkpoint (no single data.pkl inside).")
        prefix = pickles[0][: -len("data.pkl")]
        order = infos.get(prefix + "byteorder")
        if order is not None and _read_small_member(path, archive, order, _SMALL_MEMBER).strip() not in (
                b"little", b""):
            raise CheckpointError(f"{path.name} was saved on a big-endian machine; llamalab reads "
                                  "little-endian checkpoints only.")
        data = _read_small_member(path, archive, infos[pickles[0]], MAX_PICKLE_BYTES)
        mapped = MappedFile(path)
        handle = archive.fp
        size = mapped.size

        def storage(key: str, dtype: str) -> _Storage:
            info = infos.get(f"{prefix}data/{key}")
            if info is None:
                raise CheckpointError(f"{path.name} is damaged: storage {key} is missing; download it again.")
            if info.compress_type != zipfile.ZIP_STORED:
                raise CheckpointError(f"{path.name} stores tensor data compressed, which torch.save never "
                                      "does; re-save the checkpoint with torch.save.")
            offset = _member_data_offset(path, handle, info)
            if offset + info.file_size > size:
                raise CheckpointError(f"{path.name} is truncated: storage {key} ends at byte "
                                      f"{offset + info.file_size:,} of {size:,}; download it again.")
            return _Storage(offset=offset, nbytes=info.file_size, dtype=dtype, key=key)

        try:
            state = _SafeUnpickler(data, path, storage).load()
        except (CheckpointError, UnsafeCheckpointError):
            raise
        except _Refused as exc:
            raise UnsafeCheckpointError(f"{path.name}: {exc}") from None
        except Exception as exc:  # any malformed pickle: translate at the boundary
            raise CheckpointError(f"{path.name} is damaged ({type(exc).__name__}: {str(exc)[:80]}); "
                                  "download it again.") from None
        del data
        tensors = _tensors_of(path, state, mapped)
    except BaseException:
        if mapped is not None:
            mapped.close()
        raise
    finally:
        archive.close()
    return PthCheckpoint(path, tensors, mapped)
