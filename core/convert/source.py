"""Tensors of a checkpoint file, memory-mapped, and their conversion to GGUF's float types.

A ``MappedFile`` maps one checkpoint file (a ``.pth`` zip or a ``.safetensors`` file)
read-only; a ``SourceTensor`` is a typed, shaped window onto it that costs nothing until
it is read. ``fill`` copies a source tensor into (a slice of) an output array in row
blocks, converting bf16/f16/f32 to the output type as it goes, so the only full-size
array a conversion holds is the merged output tensor itself. After a tensor has been
written, ``SourceTensor.release`` tells the kernel its pages are no longer needed, so
resident memory does not grow with the model either.

f16 holds magnitudes up to 65504; bf16 and f32 go far beyond. A value that would become inf
in an f16 output makes ``fill`` raise ``ConversionError`` naming the tensor and suggesting
``--outtype bf16``: llama.cpp's own converter (gguf-py's ``astype(np.float16)``) neither clamps
nor stops there, and an inf weight turns every logit into NaN. The check runs on each converted
block while it is in cache (one masked max over its 16-bit output, about 0.1 ms per million
values), so it costs no extra pass over the model.

bf16 is kept as its raw 16 bits (``uint16``) because numpy has no bf16 type.
"""

from __future__ import annotations

import mmap
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import CheckpointError, ConversionError

__all__ = ["MappedFile", "SourceTensor", "SOURCE_DTYPES", "OUT_TYPES", "fill", "convert_block",
           "conversion_threads"]

# Source dtypes llamalab converts, by name, with the numpy type their raw bytes are viewed as.
SOURCE_DTYPES: dict[str, np.dtype] = {
    "BF16": np.dtype("<u2"),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
}
# Output types: numpy dtype of the array handed to the GGUF writer.
OUT_TYPES: dict[str, np.dtype] = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}

_BLOCK_ELEMENTS = 1 << 20  # 1M elements (4 MB as f32) converted at a time
_FAULT_AROUND = 64 * 1024  # Linux's default fault_around_bytes


class MappedFile:
    """One checkpoint file mapped read-only; ``close`` unmaps it once no view is alive."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.size = self.path.stat().st_size
        self._handle = open(self.path, "rb")
        try:
            self._map: Optional[mmap.mmap] = (
                mmap.mmap(self._handle.fileno(), 0, access=mmap.ACCESS_READ) if self.size else None)
        except (OSError, ValueError) as exc:
            self._handle.close()
            raise CheckpointError(f"cannot map {self.path.name} ({exc}); check the file.") from None

    def view(self, offset: int, count: int, dtype: np.dtype) -> np.ndarray:
        """``count`` items of ``dtype`` from byte ``offset``, without copying."""
        end = offset + count * dtype.itemsize
        if self._map is None or offset < 0 or end > self.size:
            raise CheckpointError(
                f"{self.path.name} is truncated: a tensor ends at byte {end:,} but the file has "
                f"{self.size:,}; download it again.")
        return np.frombuffer(self._map, dtype=dtype, count=count, offset=offset)

    def release(self, offset: int, nbytes: int) -> None:
        """Drop the pages of a byte range from this process's resident memory (the data
        stays in the page cache and on disk)."""
        if self._map is None or not hasattr(self._map, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
            return
        page = mmap.PAGESIZE
        # The kernel maps up to 64 KB of cached pages around each page fault ("fault-around"), so
        # reading a tensor maps back the tail of the one before it: drop that margin too, or
        # resident memory creeps up by a few pages per tensor (tens of MB for an 8-shard model).
        start = max(0, offset - _FAULT_AROUND) // page * page
        end = min(self.size, -(-(offset + nbytes + _FAULT_AROUND) // page) * page)
        if end > start:
            try:
                self._map.madvise(mmap.MADV_DONTNEED, start, end - start)
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a view is still alive somewhere; the GC unmaps it later
                pass
            self._map = None
        self._handle.close()

    def __enter__(self) -> "MappedFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class SourceTensor:
    """A tensor stored in a ``MappedFile``: ``shape`` and ``strides`` in elements."""

    file: MappedFile
    offset: int  # byte offset of element [0, 0, ...]
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: str  # a SOURCE_DTYPES key
    origin: str  # "consolidated.00.pth: layers.0.attention.wq.weight", for messages

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def is_contiguous(self) -> bool:
        expected, step = [], 1
        for d in reversed(self.shape):
            expected.append(step)
            step *= d
        return all(s == e for s, e, d in zip(self.strides, reversed(expected), self.shape) if d > 1)

    @property
    def span(self) -> int:
        """Elements from the first to one past the last element it touches."""
        if self.numel == 0:
            return 0
        return 1 + sum((d - 1) * s for d, s in zip(self.shape, self.strides))

    def raw(self) -> np.ndarray:
        """The stored values as a read-only numpy view (``uint16`` bits for bf16)."""
        dtype = SOURCE_DTYPES[self.dtype]
        flat = self.file.view(self.offset, self.span, dtype)
        if self.is_contiguous:
            return flat.reshape(self.shape)
        return np.lib.stride_tricks.as_strided(
            flat, shape=self.shape, strides=tuple(s * dtype.itemsize for s in self.strides), writeable=False)

    def release(self) -> None:
        self.file.release(self.offset, self.span * SOURCE_DTYPES[self.dtype].itemsize)


def _bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    wide = bits.astype(np.uint32)
    wide <<= 16  # in place: one temporary, not two
    return wide.view(np.float32)


def _f32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """Round to nearest even, as torch does; NaNs stay NaNs."""
    u = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        rounded[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return rounded


def convert_block(raw: np.ndarray, src: str, out: str) -> np.ndarray:
    """Values of ``raw`` (stored as ``src``) in output type ``out`` (a new array or ``raw``)."""
    if src == out:
        return raw
    if src == "BF16":
        as_f32 = _bf16_bits_to_f32(raw)
        return as_f32 if out == "F32" else as_f32.astype(OUT_TYPES[out])
    if out == "BF16":
        return _f32_to_bf16_bits(raw.astype(np.float32))
    return raw.astype(OUT_TYPES[out])


def conversion_threads() -> int:
    """Threads converting blocks in parallel (numpy releases the GIL while casting)."""
    return max(1, min(4, os.cpu_count() or 1))


_local = threading.local()
_pool: Optional[ThreadPoolExecutor] = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=conversion_threads(), thread_name_prefix="llamalab-convert")
        return _pool


def _scratch(n: int) -> np.ndarray:
    """A per-thread uint32 buffer of at least ``n`` items, reused from block to block."""
    buffer = getattr(_local, "buffer", None)
    if buffer is None or buffer.size < n:
        buffer = _local.buffer = np.empty(max(n, _BLOCK_ELEMENTS), dtype=np.uint32)
    return buffer[:n]


def _staging(n: int, dtype: np.dtype) -> np.ndarray:
    """A per-thread buffer of ``n`` items of ``dtype`` (besides ``_scratch``), reused."""
    buffer = getattr(_local, "staging", None)
    if buffer is None or buffer.nbytes < n * dtype.itemsize:
        buffer = _local.staging = np.empty(max(n, _BLOCK_ELEMENTS) * dtype.itemsize, dtype=np.uint8)
    return buffer[: n * dtype.itemsize].view(dtype)


def _convert_with_ggml(dest: np.ndarray, raw: np.ndarray, src: str, out: str) -> bool:
    """The fast path through llama.cpp's SIMD row converters; False when it does not apply.
    A destination that is not contiguous (a shard's columns of a tensor merged along its second
    axis) is converted into a contiguous buffer first, then copied into place: numpy's own
    float-to-half cast is several times slower than the copy."""
    from .ggml_rows import converters

    rows = converters()
    if rows is None or (src, out) not in _GGML_PAIRS:
        return False
    if not dest.flags.c_contiguous:
        staged = _staging(dest.size, dest.dtype).reshape(dest.shape)
        if not _convert_with_ggml(staged, raw, src, out):
            return False
        np.copyto(dest, staged)
        return True
    flat_dest = dest.reshape(-1)
    flat_raw = np.ascontiguousarray(raw).reshape(-1)
    if (src, out) == ("BF16", "F32"):
        rows.bf16_to_f32(flat_raw, flat_dest)
    elif (src, out) == ("BF16", "F16"):
        wide = _scratch(flat_raw.size).view(np.float32)
        rows.bf16_to_f32(flat_raw, wide)
        rows.f32_to_f16(wide, flat_dest)
    else:
        rows.f32_to_f16(flat_raw, flat_dest)
    return True


# F16 -> F32 stays with numpy: ggml's version turns f16 NaNs into zeros.
_GGML_PAIRS = {("BF16", "F32"), ("BF16", "F16"), ("F32", "F16")}


def _convert_into(dest: np.ndarray, raw: np.ndarray, src: str, out: str) -> bool:
    """``dest[...] = raw`` converted from ``src`` to ``out``, with at most one scratch buffer;
    True when a finite value became inf (f16's range exceeded)."""
    if src == out:
        np.copyto(dest, raw)
        return False
    if not _convert_with_ggml(dest, raw, src, out):
        if src == "BF16":
            wide = _scratch(raw.size).reshape(raw.shape)
            np.copyto(wide, raw, casting="unsafe")
            wide <<= 16
            with np.errstate(over="ignore"):  # an overflow is reported below, as one clear error
                np.copyto(dest, wide.view(np.float32), casting="same_kind")  # the cast writes into dest
        elif out == "BF16":
            np.copyto(dest, _f32_to_bf16_bits(raw.astype(np.float32)))
        else:
            with np.errstate(over="ignore"):
                np.copyto(dest, raw, casting="same_kind")
    return out == "F16" and _f16_overflowed(dest, raw, src)


_F16_EXPONENT = 0x7C00  # f16 bits of inf; NaNs are above it


def _f16_overflowed(dest: np.ndarray, raw: np.ndarray, src: str) -> bool:
    """Whether the f16 block ``dest`` holds an inf that was finite in ``raw`` (one masked max;
    the exact comparison runs only in the rare case the block holds an inf or NaN at all)."""
    bits = dest.view(np.uint16)
    magnitude = _scratch(bits.size).view(np.uint16)[: bits.size].reshape(bits.shape)
    np.bitwise_and(bits, 0x7FFF, out=magnitude)
    if magnitude.max(initial=0) < _F16_EXPONENT:
        return False
    source = _bf16_bits_to_f32(raw) if src == "BF16" else raw.astype(np.float32)
    return bool(np.any(np.isinf(dest) & np.isfinite(source)))


def fill(dest: np.ndarray, tensor: SourceTensor, out_type: str) -> None:
    """Copy ``tensor`` into ``dest`` (same shape, a view into the output) converting to
    ``out_type``, in blocks of rows spread over a few threads, so temporaries stay small."""
    raw = tensor.raw()
    if raw.shape != dest.shape:
        raise CheckpointError(f"{tensor.origin} has shape {raw.shape}, expected {dest.shape}.")
    if raw.ndim < 2 or raw.size <= _BLOCK_ELEMENTS:
        overflowed = _convert_into(dest, raw, tensor.dtype, out_type)
    else:
        step = max(1, _BLOCK_ELEMENTS // max(1, raw[0].size))
        jobs = [_executor().submit(_convert_into, dest[i:i + step], raw[i:i + step], tensor.dtype, out_type)
                for i in range(0, raw.shape[0], step)]
        overflowed = any([job.result() for job in jobs])
    if overflowed:
        file, _, name = tensor.origin.partition(": ")
        raise ConversionError(f"{name or file} ({file}) has values beyond f16's range (+-65504) that would become "
                              "inf in an f16 GGUF; convert with --outtype bf16 (or f32) instead.")
