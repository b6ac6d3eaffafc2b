"""llama.cpp's own SIMD row converters (bf16 -> f32, f32 -> f16), called through ctypes.

numpy converts float32 to float16 one element at a time (about 0.3 G elements/s here);
ggml's CPU backend, which llama-cpp-python ships as ``libggml-cpu``, does it with F16C/AVX
in the same way llama.cpp's tools do, more than ten times faster and bit for bit the same
(round to nearest even). ``converters()`` returns them, or None when the library or its
symbols cannot be found (another platform or build layout); callers then use numpy.
ctypes releases the GIL during each call, so conversion threads run in parallel.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

__all__ = ["RowConverters", "converters"]

_Row = Callable[[int, int, int], None]


@dataclass(frozen=True)
class RowConverters:
    _bf16_to_f32: _Row
    _f32_to_f16: _Row

    @staticmethod
    def _check(src: np.ndarray, dst: np.ndarray, src_dtype: str, dst_dtype: str) -> None:
        if src.dtype != np.dtype(src_dtype) or dst.dtype != np.dtype(dst_dtype) or src.size != dst.size:
            raise ValueError("row converter given mismatched arrays")
        if not (src.flags.c_contiguous and dst.flags.c_contiguous and dst.flags.writeable):
            raise ValueError("row converters need contiguous arrays and a writable destination")

    def bf16_to_f32(self, bits: np.ndarray, dst: np.ndarray) -> None:
        self._check(bits, dst, "<u2", "<f4")
        self._bf16_to_f32(bits.ctypes.data, dst.ctypes.data, bits.size)

    def f32_to_f16(self, src: np.ndarray, dst: np.ndarray) -> None:
        self._check(src, dst, "<f4", "<f2")
        self._f32_to_f16(src.ctypes.data, dst.ctypes.data, src.size)


def _function(lib: ctypes.CDLL, name: str) -> _Row:
    fn = getattr(lib, name)
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn.restype = None
    return fn


@functools.lru_cache(maxsize=1)
def converters() -> Optional[RowConverters]:
    """ggml's converters from llama-cpp-python's bundled CPU backend, if they can be loaded."""
    try:
        import llama_cpp
    except ImportError:
        return None
    folder = Path(llama_cpp.__file__).parent / "lib"
    for candidate in sorted(folder.glob("*ggml-cpu*")):
        if candidate.suffix not in (".so", ".dylib", ".dll") and ".so." not in candidate.name:
            continue
        try:
            lib = ctypes.CDLL(str(candidate))
            return RowConverters(_function(lib, "ggml_cpu_bf16_to_fp32"), _function(lib, "ggml_cpu_fp32_to_fp16"))
        except (OSError, AttributeError):
            continue
    return None
