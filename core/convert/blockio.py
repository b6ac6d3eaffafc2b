"""The data section of a GGUF appended in whole disk blocks, with direct I/O, hashed as it is written.

``TensorStream`` hands out, for each tensor in file order, a view into one of two reusable
buffers at the tensor's offset in the file; once the caller has filled it, ``commit`` sends the
whole blocks it completes to two threads, one writing them to disk and one feeding them to
sha256, while the caller fills the next tensor in the other buffer. The bytes of a block that
is not yet complete (the end of one tensor, its padding, the start of the next) are carried
over and written with the next tensor, so every write starts and ends on a block boundary.

That is what lets the file be opened with ``O_DIRECT`` on Linux: the data goes from the
buffer to the disk without being copied into the page cache. A model of tens or hundreds of
GB written through the page cache costs a memory copy per byte, evicts everything else the
machine had cached, and leaves gigabytes of dirty pages for the final ``fsync`` to wait for;
written directly it costs almost no CPU, the disk works while the next tensor is converted,
and the final ``fsync`` has only the file's metadata left to write. Where the file system
refuses direct I/O (tmpfs, some network file systems) or the platform has none (macOS,
Windows), the same block-aligned writes go through the page cache instead, and ``finish``'s
``fsync`` waits for them; the bytes are the same either way.

Each buffer is (the largest tensor + two blocks) bytes, so peak memory stays two tensors
however large the model. The buffer a tensor is filled into is reused two tensors later, after
both threads are done with it.
"""

from __future__ import annotations

import errno
import hashlib
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
import numpy as np

__all__ = ["TensorStream", "BLOCK", "SAMPLE_BYTES"]

BLOCK = 4096  # covers every disk's logical block size, and the page size O_DIRECT buffers need
SAMPLE_BYTES = 64  # bytes kept from each end of every tensor, for the writer's read-back
_O_DIRECT = getattr(os, "O_DIRECT", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation


def _pwrite(fd: int, data: memoryview, at: int) -> int:
    if hasattr(os, "pwrite"):
        return os.pwrite(fd, data, at)
    os.lseek(fd, at, os.SEEK_SET)  # Windows; one writer thread, so seek-then-write is safe
    return os.write(fd, data)


def _aligned_buffer(nbytes: int) -> np.ndarray:
    raw = np.empty(nbytes + BLOCK, dtype=np.uint8)
    skip = -raw.ctypes.data % BLOCK
    return raw[skip: skip + nbytes]


class TensorStream:
    """Appends tensors (each aligned to ``alignment`` in the file) after a header already written
    to ``path``; ``samples`` holds (start, first bytes, end, last bytes) of every tensor."""

    def __init__(self, path: Path, alignment: int, largest: int, *, direct: bool = True) -> None:
        with open(path, "rb") as handle:  # the header GGUFWriter wrote (KBs to a few MB)
            header = handle.read()
        self.path = path
        self.alignment = alignment
        headroom = -(-(BLOCK + alignment) // BLOCK) * BLOCK  # the carried bytes before a tensor
        self._buffers = [_aligned_buffer(headroom + largest) for _ in range(2)]  # before the file is opened
        self.direct = bool(direct and _O_DIRECT)
        flags = os.O_WRONLY | _O_BINARY | (_O_DIRECT if self.direct else 0)
        try:
            self._fd = os.open(path, flags)
        except OSError as exc:
            if not self.direct or exc.errno != errno.EINVAL:
                raise
            self.direct = False  # the file system has no direct I/O
            self._fd = os.open(path, os.O_WRONLY | _O_BINARY)
        self.offset = len(header)  # where the next byte of the file goes
        self._written = len(header) // BLOCK * BLOCK  # bytes on their way to disk, in whole blocks
        self._carry = bytearray(header[self._written:])  # the file's bytes from _written to offset
        self.digest = hashlib.sha256(header[: self._written])
        self._busy: list[list[Future]] = [[], []]
        self._turn = 0
        self._tensor_start = 0
        self.samples: list[tuple[int, bytes, int, bytes]] = []
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llamalab-gguf-write")
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llamalab-gguf-hash")
        self._pad()

    def _pad(self) -> None:
        pad = -self.offset % self.alignment
        self._carry += bytes(pad)
        self.offset += pad

    def slot(self, nbytes: int) -> np.ndarray:
        """A writable uint8 view of ``nbytes`` where the next tensor goes (valid until ``commit``)."""
        self._turn ^= 1
        self._wait(self._turn)  # the buffer's previous tensor is written and hashed
        buffer = self._buffers[self._turn]
        head = len(self._carry)
        if head + nbytes > buffer.size:
            raise ValueError(f"a {nbytes:,}-byte tensor does not fit the stream's buffers")
        buffer[:head] = np.frombuffer(self._carry, dtype=np.uint8)
        self._tensor_start = self.offset
        return buffer[head: head + nbytes]

    def commit(self, nbytes: int) -> None:
        """The slot is filled: write and hash the whole blocks it completes, carry the rest."""
        buffer = self._buffers[self._turn]
        head = len(self._carry)
        tensor = buffer[head: head + nbytes]
        self.samples.append((self._tensor_start, tensor[:SAMPLE_BYTES].tobytes(), self._tensor_start + nbytes,
                             tensor[-SAMPLE_BYTES:].tobytes()))
        end = head + nbytes  # bytes of the buffer that hold file data
        whole = end // BLOCK * BLOCK
        if whole:
            self._send(buffer[:whole])
        self._carry = bytearray(buffer[whole:end].tobytes())
        self.offset += nbytes
        self._pad()

    def _send(self, blocks: np.ndarray) -> None:
        at = self._written
        self._written += blocks.size
        self._busy[self._turn] += [self._writer.submit(self._write_at, blocks, at),
                                   self._hasher.submit(self.digest.update, blocks)]

    def _write_at(self, data: np.ndarray, at: int) -> None:
        """``data`` at file offset ``at``: whole blocks, through O_DIRECT where it is on."""
        view = memoryview(data).cast("B")
        while view:
            try:
                written = _pwrite(self._fd, view, at)
            except OSError as exc:
                if exc.errno != errno.EINVAL or not self.direct:
                    raise
                self._buffered()  # the file system refused this direct write: go through the cache
                continue
            if written <= 0:
                raise OSError(errno.EIO, "the disk accepted no bytes")
            view, at = view[written:], at + written

    def _buffered(self) -> None:
        import fcntl  # only where O_DIRECT exists, i.e. not on Windows

        flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
        fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~_O_DIRECT)
        self.direct = False

    def _wait(self, turn: int) -> None:
        jobs, self._busy[turn] = self._busy[turn], []
        for job in jobs:
            job.result()

    def finish(self) -> None:
        """Write what is carried (padded to a block, then the file cut to its length), fsync."""
        for turn in (self._turn ^ 1, self._turn):  # older first: a failed write raises in order
            self._wait(turn)
        if self._carry:
            tail = _aligned_buffer(-(-len(self._carry) // BLOCK) * BLOCK)
            tail[:] = 0
            tail[: len(self._carry)] = np.frombuffer(self._carry, dtype=np.uint8)
            self._write_at(tail, self._written)
            self.digest.update(self._carry)
            os.ftruncate(self._fd, self.offset)
        os.fsync(self._fd)
        self.close()

    def close(self) -> None:
        """Stop both threads (waiting for what they are doing) and close the file; idempotent."""
        self._writer.shutdown(wait=True, cancel_futures=True)
        self._hasher.shutdown(wait=True, cancel_futures=True)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
