"""Issue 13, crafted GGUF headers: every malformed header is one ``InvalidModelFileError`` line,
never a ``RecursionError``, ``ZeroDivisionError``, ``TypeError`` or ``ValueError`` (which reach
users as internal errors), and counts read from the header cannot make the reader loop or allocate."""

from __future__ import annotations

import struct
import time

import pytest

from llamalab.errors import InvalidModelFileError
from llamalab.gguf_info import read_gguf_info

U8, U32, STRING, ARRAY, U64 = 0, 4, 8, 9, 10


def s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def kv_string(key: str, value: str) -> bytes:
    return s(key) + struct.pack("<I", STRING) + s(value)


def kv_u32(key: str, value: int) -> bytes:
    return s(key) + struct.pack("<I", U32) + struct.pack("<I", value)


def gguf(*kvs: bytes, n_kv: int | None = None, n_tensors: int = 0, tail: bytes = b"") -> bytes:
    count = len(kvs) if n_kv is None else n_kv
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, count) + b"".join(kvs) + tail + b"\0" * 64


def nested_arrays(key: str, depth: int) -> bytes:
    body = s(key) + struct.pack("<I", ARRAY)
    body += (struct.pack("<IQ", ARRAY, 1)) * depth
    return body + struct.pack("<IQ", U8, 1) + b"\x01"


ARCH = kv_string("general.architecture", "llama")

CASES = {
    "deep nesting (RecursionError)": gguf(ARCH, nested_arrays("x.nested", 50_000)),
    "alignment 0 (ZeroDivisionError)": gguf(ARCH, kv_u32("general.alignment", 0)),
    "alignment 3": gguf(ARCH, kv_u32("general.alignment", 3)),
    "alignment is a string (ValueError)": gguf(ARCH, kv_string("general.alignment", "x")),
    "architecture is an array (TypeError)": gguf(
        s("general.architecture") + struct.pack("<IIQ", ARRAY, STRING, 1) + s("llama")),
    "block count is a string (ValueError)": gguf(ARCH, kv_string("llama.block_count", "many")),
    "bos id is a string": gguf(ARCH, kv_string("tokenizer.ggml.bos_token_id", "1")),
    "huge array count": gguf(ARCH, s("big") + struct.pack("<IIQ", ARRAY, U64, 1 << 62)),
    "huge string-array count": gguf(ARCH, s("tokens") + struct.pack("<IIQ", ARRAY, STRING, 1 << 40)),
    "huge string length": gguf(ARCH, s("x") + struct.pack("<IQ", STRING, 1 << 62)),
    "huge key count": gguf(ARCH, n_kv=1 << 60),
    "huge tensor count": gguf(ARCH, n_tensors=1 << 60),
    "too many dimensions": gguf(ARCH, n_tensors=1, tail=s("t") + struct.pack("<I", 1 << 30)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_crafted_header_is_one_invalid_model_file_error(tmp_path, name):
    path = tmp_path / "crafted.gguf"
    path.write_bytes(CASES[name])
    started = time.monotonic()
    with pytest.raises(InvalidModelFileError) as info:
        read_gguf_info(path)
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert "\n" not in message and message.startswith("crafted.gguf")
    assert len(message) < 300


def test_a_well_formed_minimal_header_still_reads(tmp_path):
    path = tmp_path / "ok.gguf"
    path.write_bytes(gguf(ARCH, kv_u32("llama.block_count", 2), kv_u32("general.alignment", 32),
                          kv_string("tokenizer.chat_template", "{{ messages }}")))
    info = read_gguf_info(path)
    assert (info.architecture, info.block_count, info.chat_template) == ("llama", 2, "{{ messages }}")
