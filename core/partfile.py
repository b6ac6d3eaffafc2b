"""The ``*.part`` file a transfer writes: resumed, hashed once, on disk when cut, renamed when verified.

A download never writes under its final name. ``PartFile(dest)`` owns ``dest.part``:

- ``resume()`` hashes the bytes an earlier transfer left there, once, so the transfer continues
  the same digest from the same offset (the ``Range`` it asks for); ``restart()`` starts over;
- ``write(chunk)`` writes each piece as it arrives from the network and adds it to the digest and
  the count, so nothing received waits in memory for a bigger chunk;
- leaving the ``with`` block, however it is left (the end of the body, a cut connection,
  ``KeyboardInterrupt``, a cancel), flushes the file and ``fsync``s it before anything propagates:
  a cut transfer loses at most what was still in the network, and the next run's ``Range``
  starts from bytes that are really on the disk;
- ``disk_errors(dest)`` turns ``ENOSPC`` into ``InsufficientDiskSpaceError``;
- ``finish(...)`` renames the part to its final name once its digest and size match, and deletes it
  otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Iterator, Optional

from .errors import ChecksumMismatchError, InsufficientDiskSpaceError

__all__ = ["PartFile", "part_path", "disk_errors", "finish"]

_READ_CHUNK = 4 * 1024 * 1024


def part_path(dest: Path) -> Path:
    """Where the transfer of ``dest`` writes until it is verified: ``NAME.part`` beside it."""
    return dest.with_name(dest.name + ".part")


@contextlib.contextmanager
def disk_errors(dest: Path) -> Iterator[None]:
    """Turn a full disk while writing ``dest`` (or its part) into one clear error."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise InsufficientDiskSpaceError(
                f"the disk filled up while writing {dest.name}; free some space and pull again "
                "(the partial file was kept for resuming where possible)."
            ) from None
        raise


class PartFile:
    """``dest.part`` with the digest (any ``hashlib`` name) and size of what it holds."""

    def __init__(self, dest: Path, algorithm: str = "sha256") -> None:
        self.dest = dest
        self.path = part_path(dest)
        self.algorithm = algorithm
        self.digest = hashlib.new(algorithm)
        self.size = 0
        self._handle: Optional[BinaryIO] = None

    def resume(self) -> int:
        """Hash what an earlier transfer left in the part (read once); return its size."""
        self.restart()
        if not self.path.is_file():
            return 0
        with open(self.path, "rb") as handle:
            while chunk := handle.read(_READ_CHUNK):
                self.digest.update(chunk)
                self.size += len(chunk)
        return self.size

    def restart(self) -> None:
        """Forget what the part holds: the next ``with`` block truncates it."""
        self.digest = hashlib.new(self.algorithm)
        self.size = 0

    def hexdigest(self) -> str:
        return self.digest.hexdigest()

    def write(self, chunk: bytes) -> None:
        assert self._handle is not None, "PartFile.write outside its with block"
        self._handle.write(chunk)
        self.digest.update(chunk)
        self.size += len(chunk)

    def __enter__(self) -> "PartFile":
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "ab" if self.size else "wb")
        return self

    def __exit__(self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        handle, self._handle = self._handle, None
        if handle is None:
            return
        # A failure to sync while another error propagates (a full disk, typically) must not hide it.
        with contextlib.suppress(OSError) if exc is not None else contextlib.nullcontext():
            try:
                handle.flush()
                os.fsync(handle.fileno())
            finally:
                handle.close()


def finish(part: Path, dest: Path, digest: str, expected: Optional[str], counted: Optional[int] = None) -> Path:
    """Rename ``part`` to ``dest`` once its digest matched ``expected`` and its size the bytes hashed."""
    size = part.stat().st_size
    if (expected and digest != expected.lower()) or (counted is not None and size != counted):
        part.unlink(missing_ok=True)
        raise ChecksumMismatchError(
            f"{dest.name} is damaged: sha256 {digest[:12]}... ({size:,} bytes) differs from the expected "
            f"{(expected or digest)[:12]}... ({counted if counted is not None else size:,} bytes); pull it again "
            "(the bad file was deleted)."
        )
    os.replace(part, dest)
    return dest
