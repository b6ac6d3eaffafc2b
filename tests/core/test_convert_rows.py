"""llama.cpp's SIMD row converters give bit-identical results to numpy's casts."""

from __future__ import annotations

import numpy as np
import pytest

from llamalab.convert.ggml_rows import converters
from llamalab.convert.source import _convert_into


@pytest.fixture(scope="module")
def bf16_bits():
    rng = np.random.default_rng(7)
    values = np.concatenate([
        rng.standard_normal(100_000).astype(np.float32) * 0.02,     # typical weights
        rng.standard_normal(10_000).astype(np.float32) * 1e-6,      # f16 subnormals after conversion
        np.array([0.0, -0.0, 1e-40, 65504.0, 70000.0, -1e9, np.inf, -np.inf, np.nan], dtype=np.float32),
    ])
    return (values.view(np.uint32) >> 16).astype(np.uint16)


def _numpy_reference(bits: np.ndarray, out: str) -> np.ndarray:
    wide = (bits.astype(np.uint32) << 16).view(np.float32)
    return wide if out == "F32" else wide.astype(np.float16)


def test_llama_cpp_converters_are_found_here():
    assert converters() is not None  # llama-cpp-python ships libggml-cpu next to its bindings


@pytest.mark.parametrize("out", ["F32", "F16"])
def test_bf16_conversion_is_bit_identical(bf16_bits, out):
    dest = np.empty(bf16_bits.shape, dtype=np.float32 if out == "F32" else np.float16)
    _convert_into(dest, bf16_bits, "BF16", out)
    want = _numpy_reference(bf16_bits, out)
    assert np.array_equal(dest.view(np.uint8), want.view(np.uint8))  # NaN bits included


def test_f32_to_f16_and_back_is_bit_identical(bf16_bits):
    values = _numpy_reference(bf16_bits, "F32") * np.float32(1.0001)
    half = np.empty(values.shape, np.float16)
    _convert_into(half, values, "F32", "F16")
    assert np.array_equal(half.view(np.uint16), values.astype(np.float16).view(np.uint16))
    back = np.empty(values.shape, np.float32)
    _convert_into(back, half, "F16", "F32")
    assert np.array_equal(back.view(np.uint32), half.astype(np.float32).view(np.uint32))


def test_non_contiguous_source_still_converts(bf16_bits):
    matrix = bf16_bits[:100_000].reshape(100, 1000)
    transposed = matrix.T  # a strided view
    dest = np.empty(transposed.shape, np.float16)
    _convert_into(dest, transposed, "BF16", "F16")
    assert np.array_equal(dest, _numpy_reference(np.ascontiguousarray(transposed), "F16"))


@pytest.mark.parametrize("out", ["F32", "F16"])
def test_a_shards_columns_convert_in_place_like_numpy(bf16_bits, out):
    """A tensor merged along its second axis gets each shard's block as a column slice (not
    contiguous): converted through a staging buffer, bit for bit numpy's cast, nothing else touched."""
    block = bf16_bits[: 100 * 64].reshape(100, 64)
    merged = np.full((100, 256), 7, dtype=np.float32 if out == "F32" else np.float16)
    dest = merged[:, 64:128]
    assert not dest.flags.c_contiguous
    _convert_into(dest, block, "BF16", out)
    assert np.array_equal(dest.view(np.uint8), _numpy_reference(block, out).view(np.uint8))
    untouched = np.delete(merged, np.s_[64:128], axis=1)
    assert (untouched == 7).all()
