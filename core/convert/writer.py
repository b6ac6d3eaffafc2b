"""Streaming a planned model into a GGUF file that appears only once it is complete and checked.

A conversion is planned first: a list of ``PlannedTensor`` (GGUF name, shape, output type,
and a ``fill`` function that writes the tensor's values into an array it is handed).
``write_gguf`` then

1. checks the output folder is writable and has room (``fetch.ensure_free_space``);
2. declares every tensor to ``gguf.GGUFWriter`` (``add_tensor_info``), which writes the
   header, key-values and tensor infos into ``NAME.part``;
3. builds one tensor at a time in a ``blockio.TensorStream`` buffer while two threads write the
   previous one to disk (with direct I/O where the file system has it) and feed the same bytes
   to sha256, releasing source pages as it goes, so peak memory is two merged tensors plus
   small conversion blocks whatever the size of the model, and the file's sha256 (for the
   model store) costs no second read;
4. checks the file without reading it again in full (``_verify``): the header and tensor table
   parse and match the plan (names, shapes, types, order); the file is exactly as long as the
   table says; and for every tensor the first and last ``SAMPLE_BYTES`` (64) bytes read back equal the
   bytes written there. That proves each tensor's data sits at the offset llama.cpp will read
   it from and nothing was lost at either end; a corrupted byte in the middle of a tensor would
   not be seen (the sha256 covers what was handed to the OS, not what the disk returns);
5. renames it to ``NAME`` and returns a ``WrittenGGUF`` (path, size, sha256).

Any failure deletes the ``.part`` file; disk-full and permission errors become
``InsufficientDiskSpaceError`` and ``ConversionError`` with one line saying what to do.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from ..errors import ConversionError, InsufficientDiskSpaceError
from ..fetch import ensure_free_space, part_path
from ..gguf_info import _read_header, read_gguf_info
from ..progress import ProgressCallback, report
from .blockio import TensorStream
from .source import OUT_TYPES, SourceTensor

__all__ = ["PlannedTensor", "ConversionPlan", "WrittenGGUF", "write_gguf", "ggml_type"]

_HEADER_ALLOWANCE = 16 * 1024 * 1024  # key-values and tensor infos, generously


@dataclass(frozen=True)
class PlannedTensor:
    name: str  # GGUF name, e.g. blk.0.attn_q.weight
    shape: tuple[int, ...]  # numpy order (rows first)
    out_type: str  # "F32", "F16" or "BF16"
    fill: Callable[[np.ndarray], None]  # writes the values into a fresh array of ``shape``
    sources: tuple[SourceTensor, ...] = ()  # released after the tensor is written

    @property
    def nbytes(self) -> int:
        n = OUT_TYPES[self.out_type].itemsize
        for d in self.shape:
            n *= d
        return n


def ggml_type(out_type: str) -> Any:
    import gguf

    return gguf.GGMLQuantizationType[out_type]


@contextlib.contextmanager
def _translated_os_errors(out: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InsufficientDiskSpaceError(
                f"the disk filled up while writing {out.name}; free some space or choose another --out "
                "(the partial file was deleted).") from None
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise ConversionError(f"cannot write {out}: permission denied; choose another --out or make "
                                  f"{out.parent} writable.") from None
        if exc.errno == errno.EISDIR:
            raise ConversionError(f"{out} is a folder; give a file name ending in .gguf as --out.") from None
        raise ConversionError(f"writing {out} failed ({exc.strerror or exc}); check the output path.") from None


def _check_output(out: Path, needed: int) -> None:
    if out.is_dir():
        raise ConversionError(f"{out} is a folder; give a file name ending in .gguf as --out.")
    with _translated_os_errors(out):
        ensure_free_space(out.parent, needed)
        if not os.access(out.parent, os.W_OK):
            raise PermissionError(errno.EACCES, "permission denied", str(out.parent))


@dataclass(frozen=True)
class WrittenGGUF:
    """A GGUF ``write_gguf`` wrote and checked: where, how big, and the sha256 of its bytes."""

    path: Path
    size_bytes: int
    sha256: str


def _verify(part: Path, out: Path, plan: Sequence[PlannedTensor], sink: TensorStream) -> None:
    info = read_gguf_info(part)
    expected = [(t.name, tuple(reversed(t.shape)), t.out_type) for t in plan]
    found = [(t.name, tuple(t.shape), t.ggml_type) for t in info.tensors]
    if len(found) != len(expected):
        raise ConversionError(f"{out.name} was written with {len(found)} tensors instead of {len(expected)}; "
                              "it was deleted. This is a llamalab bug; please report it.")
    for want, got in zip(expected, found):
        if want != got:
            raise ConversionError(f"{out.name} holds {got} where {want} was written; it was deleted. "
                                  "This is a llamalab bug; please report it.")
    if info.size_bytes != sink.offset:
        raise ConversionError(f"{out.name} has {info.size_bytes:,} bytes where {sink.offset:,} were written; "
                              "it was deleted. Check the disk, then convert again.")
    header, data_start = _read_header(part)  # the tensor table's own offsets: where llama.cpp will read
    with open(part, "rb") as handle:
        for t, (_, _, _, offset), (_, head, _, tail) in zip(plan, header.tensors, sink.samples):
            start = data_start + offset
            if os.pread(handle.fileno(), len(head), start) != head or \
                    os.pread(handle.fileno(), len(tail), start + t.nbytes - len(tail)) != tail:
                raise ConversionError(f"{out.name} reads back different data for {t.name} than was written; it "
                                      "was deleted. Check the disk, then convert again.")


def write_gguf(out: Path, plan: Sequence[PlannedTensor], header: Callable[[Any], None], *,
               progress: Optional[ProgressCallback] = None, stage: str = "converting",
               direct_io: bool = True) -> WrittenGGUF:
    """Write ``plan`` as a ``llama`` GGUF at ``out``; ``header(writer)`` adds the key-values.
    ``direct_io=False`` writes through the page cache even where direct I/O is available."""
    import gguf

    out = Path(out).expanduser().absolute()
    total = sum(t.nbytes for t in plan)
    _check_output(out, total + _HEADER_ALLOWANCE)
    part = part_path(out)
    writer = gguf.GGUFWriter(part, "llama")
    sink: Optional[TensorStream] = None
    started = time.perf_counter()
    try:
        header(writer)
        for t in plan:
            writer.add_tensor_info(t.name, t.shape, OUT_TYPES[t.out_type], t.nbytes, raw_dtype=ggml_type(t.out_type))
        with _translated_os_errors(out):
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            writer.close()  # GGUFWriter wrote the header; the data goes through the stream
            sink = TensorStream(part, writer.data_alignment, max((t.nbytes for t in plan), default=0),
                                direct=direct_io)
            _stream_tensors(sink, plan, progress, stage, total)
            sink.finish()
        _verify(part, out, plan, sink)
        with _translated_os_errors(out):
            os.replace(part, out)
    except BaseException:
        if sink is not None:
            with contextlib.suppress(OSError):
                sink.close()
        _discard(writer, part)
        raise
    report(progress, stage, total, total, message=f"{time.perf_counter() - started:.1f} s")
    return WrittenGGUF(out, sink.offset, sink.digest.hexdigest())


def _stream_tensors(sink: TensorStream, plan: Sequence[PlannedTensor], progress: Optional[ProgressCallback],
                    stage: str, total: int) -> None:
    """Build each tensor in the stream's buffer while the previous one is written and hashed by
    its threads: at most two output tensors exist at a time, and converting overlaps writing."""
    done = 0
    report(progress, stage, 0, total)
    for t in plan:
        data = sink.slot(t.nbytes).view(OUT_TYPES[t.out_type]).reshape(t.shape)
        t.fill(data)
        del data
        for source in t.sources:
            source.release()
        sink.commit(t.nbytes)
        done += t.nbytes
        report(progress, stage, done, total)


def _discard(writer: Any, part: Path) -> None:
    with contextlib.suppress(Exception):
        writer.close()
    with contextlib.suppress(OSError):
        part.unlink()


@dataclass
class ConversionPlan:
    """What a layout reader (``meta``, ``hf``) produces: the model and how to write it."""

    params: Any  # LlamaParams
    vocab: Any  # SpmVocab
    tensors: list[PlannedTensor]
    name: str
    license: Optional[str]
    layout: str  # "meta" or "hf"
    closers: list[Callable[[], None]]

    def close(self) -> None:
        for close in self.closers:
            with contextlib.suppress(Exception):
                close()
        self.closers = []

    def __enter__(self) -> "ConversionPlan":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
