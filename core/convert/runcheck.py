"""The check that a GGUF just written (converted or quantized) runs in llama.cpp, at a bounded cost.

Two depths, chosen per file by ``plan_check``:

``run``        llama.cpp loads the weights (its loader validates every tensor's name, shape,
               type and place in the file), builds its compute graph and evaluates one short
               prompt; the last position's logits must be finite. This reads every weight
               once, so it is done only when that fits: the weights on a GPU with room for
               them (read through llama.cpp's small staging buffers, host memory stays flat),
               or in host memory within the command's own bound (512 MiB + 2 x the largest
               tensor, the bound the streaming converter keeps) and within free RAM.
``structure``  llama.cpp loads the model without its weights (``no_alloc``: metadata,
               vocabulary, every tensor's name, shape, type and file range checked against the
               architecture) and reserves the compute graph for a small context; no weight is
               read. Together with the writer's own checks (tensor table against the plan,
               sampled data at both ends of every tensor, file length, sha256 of the bytes
               written) this proves the file is what llama.cpp expects, not that it computes.
               Where this llama.cpp has no ``no_alloc``, ``vocab_only`` is used.

``check_model`` returns a ``RunCheck`` whose ``summary`` is the one line a CLI prints and the
progress callback carries. A file llama.cpp refuses raises ``ConversionError`` (one line).
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..errors import ConfigError, ConversionError, LlamalabError
from ..progress import ProgressCallback, report

__all__ = ["RunCheck", "CheckPlan", "CHECK_MODES", "check_mode", "plan_check", "check_model", "memory_bound"]

CHECK_MODES = ("auto", "run", "structure")
_MIB = 1 << 20
_BASE_BOUND = 512 * _MIB
_RUN_OVERHEAD = 64 * _MIB  # context, KV cache and compute buffer of a 64-token context, generously
_PROMPT = "Hello"


@dataclass(frozen=True)
class CheckPlan:
    mode: str  # "run" or "structure"
    gpu_layers: int  # -1: every layer on the GPU; 0: CPU only
    reason: str


@dataclass(frozen=True)
class RunCheck:
    mode: str  # "run" or "structure"
    seconds: float
    summary: str  # one line for a person


def memory_bound(largest_tensor_bytes: int) -> int:
    """Peak resident memory a conversion command keeps to: 512 MiB + 2 x its largest tensor."""
    return _BASE_BOUND + 2 * largest_tensor_bytes


def _proc_kb(path: str, field: str) -> Optional[int]:
    try:
        with open(path, encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_memory() -> Optional[int]:
    """Bytes this process may still take: free RAM (``MemAvailable``), less where an address-space
    limit (``RLIMIT_AS``, e.g. a JupyterLab job's ceiling) leaves less; None where unknown."""
    free = _proc_kb("/proc/meminfo", "MemAvailable")
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        mapped = _proc_kb("/proc/self/status", "VmSize")
        if soft != resource.RLIM_INFINITY and mapped is not None:
            headroom = max(0, soft - mapped)
            free = headroom if free is None else min(free, headroom)
    except ImportError:
        pass
    return free


def _gpu_free() -> Optional[int]:
    from ..hardware import detect_gpus, gpu_offload_supported

    if not gpu_offload_supported():
        return None
    gpus = detect_gpus()
    return max((g.free_bytes for g in gpus), default=None)


def _human(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB"
    return f"{n / 1e6:.0f} MB" if n >= 1e7 else f"{n / 1e6:.1f} MB"


def check_mode(mode: str) -> str:
    """``mode`` if it is one of ``CHECK_MODES``; a one-line ``ConfigError`` otherwise."""
    if mode not in CHECK_MODES:
        raise ConfigError(f"unknown check '{mode}'; choose one of: {', '.join(CHECK_MODES)}.")
    return mode


def plan_check(weights: int, largest: int, *, mode: str = "auto", resident: Optional[int] = None,
               free: Optional[int] = None, gpu_free: Optional[int] = None) -> CheckPlan:
    """Which check ``check_model`` does for a model of ``weights`` bytes whose largest tensor has
    ``largest`` bytes. ``resident`` (this process's RSS now), ``free`` (``available_memory``)
    and ``gpu_free`` (free VRAM where llama.cpp can offload) are measured when not given."""
    if check_mode(mode) == "structure":
        return CheckPlan("structure", 0, "asked for")
    if gpu_free is None and mode == "auto":
        gpu_free = _gpu_free()
    if gpu_free is not None and weights + _BASE_BOUND <= gpu_free:
        return CheckPlan("run", -1, f"{_human(weights)} of weights fit the GPU")
    if mode == "run":
        return CheckPlan("run", 0, "asked for")
    if resident is None:
        resident = _proc_kb("/proc/self/status", "VmRSS") or 0
    free = available_memory() if free is None else free
    bound = memory_bound(largest)
    needed = weights + _RUN_OVERHEAD
    if resident + needed > bound:
        return CheckPlan("structure", 0, f"reading {_human(weights)} of weights would take the command past "
                                         f"its {_human(bound)} memory bound")
    if free is not None and needed > free // 2:
        return CheckPlan("structure", 0, f"{_human(weights)} of weights do not fit in {_human(free)} of free RAM")
    return CheckPlan("run", 0, f"{_human(weights)} of weights fit in memory")


_backend_ready = False


def _llama() -> Any:
    """llama_cpp, its backend initialised and its log quiet (errors only)."""
    global _backend_ready
    import llama_cpp

    quiet = logging.getLogger("llama-cpp-python")  # llama-cpp-python routes llama.cpp's log here
    if quiet.level == logging.NOTSET:
        quiet.setLevel(logging.ERROR)
    if not _backend_ready:
        llama_cpp.llama_backend_init()
        _backend_ready = True
    return llama_cpp


def _model_params(llama_cpp: Any, plan: CheckPlan) -> tuple[Any, str]:
    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = plan.gpu_layers
    fields = {name for name, *_ in type(params)._fields_}
    if plan.mode == "run":
        if plan.gpu_layers and "load_mode" in fields:
            params.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE  # read through staging buffers, not a mapping
        return params, "weights"
    if "no_alloc" in fields and "load_mode" in fields:
        params.no_alloc = True
        params.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE  # no_alloc cannot map the file
        return params, "tensor table"
    params.vocab_only = True
    return params, "vocabulary"


def _context(llama_cpp: Any, model: Any) -> Any:
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = 64, 16, 16
    threads = max(1, min(4, os.cpu_count() or 1))
    params.n_threads = params.n_threads_batch = threads
    return llama_cpp.llama_init_from_model(model, params)


def _evaluate(llama_cpp: Any, model: Any, ctx: Any) -> int:
    """Decode one short prompt; the number of tokens. Raises ``ConversionError`` on NaN/inf logits."""
    import numpy as np

    vocab = llama_cpp.llama_model_get_vocab(model)
    text = _PROMPT.encode()
    tokens = (llama_cpp.llama_token * 16)()
    n = llama_cpp.llama_tokenize(vocab, text, len(text), tokens, 16, True, False)
    if n <= 0:
        raise ConversionError("llama.cpp could not tokenize a test prompt with the file's vocabulary")
    if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(tokens, n)) != 0:
        raise ConversionError("llama.cpp failed to evaluate a test prompt")
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    pointer = llama_cpp.llama_get_logits_ith(ctx, -1)
    logits = np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,))
    if not np.isfinite(logits).all():
        raise ConversionError("a test prompt gave NaN/inf logits (weights beyond the output type's range?)")
    return n


def check_model(path: os.PathLike[str] | str, *, mode: str = "auto", progress: Optional[ProgressCallback] = None,
                plan: Optional[CheckPlan] = None) -> RunCheck:
    """Check that llama.cpp accepts (and, where it fits, runs) the GGUF at ``path``."""
    from ..gguf_info import read_gguf_info

    path = Path(path)
    info = read_gguf_info(path)
    if plan is None:
        largest = max((t.n_bytes for t in info.tensors), default=0)
        plan = plan_check(info.tensor_bytes, largest, mode=mode)
    stage = f"checking {path.name}"
    report(progress, stage, 0, 1, unit="it")
    started = time.perf_counter()
    llama_cpp = _llama()
    params, what = _model_params(llama_cpp, plan)
    model = ctx = None
    try:
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not model:
            raise ConversionError("llama.cpp refused to load it")
        ctx = _context(llama_cpp, model) if what != "vocabulary" else None
        if not ctx and what != "vocabulary":
            raise ConversionError("llama.cpp could not build a context for it")
        n_tokens = _evaluate(llama_cpp, model, ctx) if plan.mode == "run" else 0
    except ConversionError as exc:
        raise ConversionError(f"{path.name} does not run: {exc}; the file was deleted, nothing was registered "
                              "(a llamalab bug if the checkpoint is sound: please report it).") from None
    except LlamalabError:
        raise
    except Exception as exc:
        raise ConversionError(f"{path.name} does not run ({exc}); the file was deleted, nothing was registered.") \
            from None
    finally:
        if ctx:
            llama_cpp.llama_free(ctx)
        if model:
            llama_cpp.llama_model_free(model)
    seconds = time.perf_counter() - started
    where = "on the GPU" if plan.gpu_layers else "on the CPU"
    if plan.mode == "run":
        summary = (f"checked: llama.cpp loaded {path.name} {where} and evaluated a {n_tokens}-token prompt "
                   f"({plan.reason}; {seconds:.1f} s)")
    else:
        graph = "" if what == "vocabulary" else " and built its graph"
        summary = (f"checked without running: llama.cpp loaded the {what} of {path.name}{graph}, "
                   f"no weight read ({plan.reason}; {seconds:.1f} s)")
    report(progress, stage, 1, 1, unit="it", message=summary)
    return RunCheck(plan.mode, seconds, summary)
