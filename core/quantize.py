"""Quantizing a GGUF with llama.cpp's own quantizer, and checking the result runs.

``quantize_gguf(src, dst, "Q4_K_M")`` calls ``llama_cpp.llama_model_quantize`` (the code
behind llama.cpp's ``llama-quantize``) into ``dst.part``, checks its return code and the
output's header, and renames it only then. ``QUANT_TYPES`` lists every type llama.cpp
offers for a full model. Whether the result runs is checked by ``llamalab.convert.runcheck``
(``quantize_and_register`` does it), at a cost bounded by the memory the command may use.

The quantizer is one blocking C call that cannot be interrupted; given a ``cancel`` event,
``quantize_gguf`` runs it in a child Python process instead and terminates that process
when the event is set (raising ``OperationCancelledError``, the ``.part`` file deleted).
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

from .errors import QuantizeError
from .fetch import ensure_free_space, part_path
from .gguf_info import read_gguf_info
from .progress import ProgressCallback, cancellable, raise_if_cancelled, report

__all__ = ["QUANT_TYPES", "quantize_gguf", "normalize_quant_type"]

# llama.cpp's llama_ftype values (include/llama.h); the ones llama-quantize offers for whole models.
QUANT_TYPES: dict[str, int] = {
    "F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9,
    "Q2_K": 10, "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15,
    "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18, "IQ2_XXS": 19, "IQ2_XS": 20, "Q2_K_S": 21,
    "IQ3_XS": 22, "IQ3_XXS": 23, "IQ1_S": 24, "IQ4_NL": 25, "IQ3_S": 26, "IQ3_M": 27,
    "IQ2_S": 28, "IQ2_M": 29, "IQ4_XS": 30, "IQ1_M": 31, "BF16": 32, "TQ1_0": 36, "TQ2_0": 37,
}
# The i-quants below 4 bits need an importance matrix to give usable models.
NEEDS_IMATRIX = {"IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M"}


def normalize_quant_type(name: str) -> str:
    """``q4_k_m`` -> ``Q4_K_M``; a one-line error listing the choices otherwise."""
    key = name.strip().upper()
    if key not in QUANT_TYPES:
        raise QuantizeError(f"unknown quantization type '{name}'; choose one of: {', '.join(QUANT_TYPES)}.")
    if key in NEEDS_IMATRIX:
        raise QuantizeError(f"{key} needs an importance matrix, which llamalab does not compute; "
                            "use Q2_K, IQ3_S or a 4-bit type instead.")
    return key


def _quantize_here(src: Path, part: Path, ftype: int, n_threads: int) -> int:
    """llama.cpp's quantizer in this process; its return code."""
    import logging

    import llama_cpp

    quiet = logging.getLogger("llama-cpp-python")  # llama-cpp-python routes llama.cpp's log here
    if quiet.level == logging.NOTSET:
        quiet.setLevel(logging.ERROR)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = n_threads  # 0: all hardware threads
    return int(llama_cpp.llama_model_quantize(str(src).encode(), str(part).encode(), ctypes.byref(params)))


_CHILD = "import sys; from llamalab.quantize import _child_main; raise SystemExit(_child_main(sys.argv[1:]))"


def _child_main(argv: Sequence[str]) -> int:
    """The child process's work (``python -c _CHILD SRC PART FTYPE NTHREAD``): its exit code is
    the quantizer's return code (a code that does not fit an exit status becomes 1)."""
    src, part, ftype, n_threads = argv
    code = _quantize_here(Path(src), Path(part), int(ftype), int(n_threads))
    return code if 0 <= code < 126 else 1


def _quantize_in_child(src: Path, part: Path, ftype: int, n_threads: int, cancel: threading.Event) -> int:
    """The quantizer in a child process, terminated as soon as ``cancel`` is set."""
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(src), str(part), str(ftype), str(n_threads)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                return child.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                raise_if_cancelled(cancel, f"the quantization of {src.name}")
    finally:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def quantize_gguf(src: os.PathLike[str] | str, dst: os.PathLike[str] | str, qtype: str, *,
                  n_threads: Optional[int] = None, progress: Optional[ProgressCallback] = None,
                  cancel: Optional[threading.Event] = None) -> Path:
    """Quantize ``src`` to ``dst`` as ``qtype``; ``dst`` appears only when it is complete and valid.

    With ``cancel``, the quantizer runs in a child process that is terminated once the event
    is set (``OperationCancelledError``; nothing is left behind)."""
    key = normalize_quant_type(qtype)
    src, dst = Path(src), Path(dst)
    info = read_gguf_info(src)
    if src.resolve() == dst.resolve():
        raise QuantizeError(f"the output would overwrite the input {src.name}; choose another --out path.")
    ensure_free_space(dst.parent, info.size_bytes)  # the result is never larger than the input
    part = part_path(dst)
    progress = cancellable(progress, cancel, f"the quantization of {src.name}")
    started = time.perf_counter()
    try:
        report(progress, f"quantizing to {key}", 0, None, unit="it")
        if cancel is None:
            code = _quantize_here(src, part, QUANT_TYPES[key], n_threads or 0)
        else:
            code = _quantize_in_child(src, part, QUANT_TYPES[key], n_threads or 0, cancel)
        if code != 0 or not part.exists():
            raise QuantizeError(f"llama.cpp's quantizer failed on {src.name} (return code {code}); "
                                "check that the input is an F32/F16/BF16 GGUF and the disk has room.")
        out = read_gguf_info(part)
        if len(out.tensors) != len(info.tensors):
            raise QuantizeError(f"the quantized file has {len(out.tensors)} tensors, the input "
                                f"{len(info.tensors)}; the output was deleted.")
        os.replace(part, dst)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    report(progress, f"quantizing to {key}", 1, 1, unit="it",
           message=f"{time.perf_counter() - started:.1f} s")
    return dst
