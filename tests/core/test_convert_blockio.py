"""blockio.TensorStream: the bytes a GGUF's data section must hold, whatever the block layout.

The expected file is built the plain way (header, then each tensor at the next multiple of the
alignment, zero padding between) and compared byte for byte with what the stream wrote, with
direct I/O on and off, with a file system refusing direct I/O halfway, and for tensors smaller
than a block, ending exactly on a block boundary, and larger than several blocks.
"""

from __future__ import annotations

import errno
import hashlib
import os

import numpy as np
import pytest

from llamalab.convert import blockio
from llamalab.convert.blockio import BLOCK, TensorStream


def _expected(header: bytes, tensors: list[bytes], alignment: int) -> bytes:
    out = bytearray(header)
    out += bytes(-len(out) % alignment)
    for data in tensors:
        out += data
        out += bytes(-len(out) % alignment)
    return bytes(out)


def _write(path, header: bytes, tensors: list[bytes], alignment: int, direct: bool) -> TensorStream:
    path.write_bytes(header)
    stream = TensorStream(path, alignment, max(len(t) for t in tensors), direct=direct)
    try:
        for data in tensors:
            slot = stream.slot(len(data))
            slot[:] = np.frombuffer(data, dtype=np.uint8)
            stream.commit(len(data))
        stream.finish()
    finally:
        stream.close()
    return stream


def _tensors(seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    sizes = [1, 31, 64, BLOCK - 24, BLOCK, 3 * BLOCK + 5, 96, 10 * BLOCK + 100, 2, BLOCK * 4]
    return [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("header_size", [24, BLOCK - 8, BLOCK, 3 * BLOCK + 1000])
@pytest.mark.parametrize("alignment", [32, 64])
def test_the_file_holds_header_tensors_and_padding_in_order(tmp_path, direct, header_size, alignment):
    header = bytes(range(256)) * (header_size // 256) + b"h" * (header_size % 256)
    tensors = _tensors(header_size + alignment)
    path = tmp_path / "m.gguf.part"
    stream = _write(path, header, tensors, alignment, direct)
    want = _expected(header, tensors, alignment)
    assert path.read_bytes() == want
    assert stream.offset == len(want)
    assert stream.digest.hexdigest() == hashlib.sha256(want).hexdigest()
    starts = [start for start, _, _, _ in stream.samples]
    assert all(start % alignment == 0 for start in starts)
    for (start, head, end, tail), data in zip(stream.samples, tensors):
        assert want[start:end] == data and head == data[:64] and tail == data[-64:]


def test_direct_io_is_used_where_the_file_system_has_it(tmp_path):
    if not getattr(os, "O_DIRECT", 0):
        pytest.skip("this platform has no O_DIRECT (macOS, Windows): the stream writes through the page cache")
    stream = _write(tmp_path / "m.part", b"GGUF" * 10, _tensors(1), 32, direct=True)
    if not stream.direct:
        pytest.skip(f"the file system of {tmp_path} refuses O_DIRECT; the fallback is tested below")
    assert stream.direct


def test_a_file_system_refusing_a_direct_write_falls_back_to_the_page_cache(tmp_path, monkeypatch):
    """EINVAL from a direct write (as from a file system without O_DIRECT support) is not an error:
    the same write is repeated through the page cache and the file is the same."""
    if not getattr(os, "O_DIRECT", 0):
        pytest.skip("this platform has no O_DIRECT (macOS, Windows)")
    real = os.pwrite
    refused = []

    def pwrite(fd, data, at):
        import fcntl

        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT and at > 0:
            refused.append(at)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, at)

    monkeypatch.setattr(blockio.os, "pwrite", pwrite)
    header, tensors = b"GGUF" * 1500, _tensors(2)
    path = tmp_path / "m.part"
    stream = _write(path, header, tensors, 32, direct=True)
    assert refused and not stream.direct
    assert path.read_bytes() == _expected(header, tensors, 32)


def test_a_failed_write_surfaces_and_the_threads_stop(tmp_path, monkeypatch):
    def full(fd, data, at):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(blockio.os, "pwrite", full)
    with pytest.raises(OSError) as info:
        _write(tmp_path / "m.part", b"GGUF" * 1500, _tensors(3), 32, direct=False)
    assert info.value.errno == errno.ENOSPC


def test_a_tensor_larger_than_the_buffers_is_refused(tmp_path):
    path = tmp_path / "m.part"
    path.write_bytes(b"GGUF")
    stream = TensorStream(path, 32, 100)
    try:
        with pytest.raises(ValueError, match="does not fit"):
            stream.slot(3 * BLOCK)
    finally:
        stream.close()
