"""GPUs, llama.cpp's GPU support, how much memory a model needs, and how many layers to offload.

``detect_gpus()`` lists NVIDIA GPUs (NVML, else ``nvidia-smi``); ``gpu_offload_supported()`` asks
llama_cpp whether it was built with a GPU backend. ``estimate_memory()``/``estimate_for()`` size a
model from its tensors; ``plan_offload()`` turns that into ``n_gpu_layers`` for ``llama_cpp.Llama``
(llama-cpp-python does not expose llama.cpp's automatic fit to free VRAM). ``llama2_tensors()``/
``llama2_info()`` rebuild the real tensor lists of Meta's Llama-2 7B/13B/70B GGUFs, so docs,
``doctor`` and tests can reason about them without the files.

How llama.cpp places layers (``llama-model.cpp``): with ``n_gpu_layers = n`` the *last* ``n``
repeating blocks go to the GPU, together with their KV cache; the output layer (``output.weight``,
``output_norm``) counts as one extra layer and is offloaded only when ``n > block_count``.
``token_embd`` always stays on the CPU. With several GPUs llama.cpp spreads layers over all of
them in proportion to their free memory; ``plan_offload`` plans for the single GPU with the most
free memory, which is exact on one GPU and conservative on more.
"""

from __future__ import annotations

import contextlib
import math
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from .errors import ConfigError
from .gguf_info import GGUFInfo, TensorInfo

__all__ = [
    "GPU", "detect_gpus", "gpu_offload_supported", "CUDA_INSTALL_HINT",
    "MemoryEstimate", "estimate_memory", "estimate_for",
    "OffloadPlan", "plan_offload", "llama2_tensors", "llama2_info",
]

CUDA_INSTALL_HINT = 'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir --no-deps llama-cpp-python'

NVIDIA_SMI_QUERY = ["nvidia-smi", "--query-gpu=index,name,memory.total,memory.free",
                    "--format=csv,noheader,nounits"]
DEFAULT_N_BATCH = 512  # llama-cpp-python's default n_batch (and so n_ubatch)
_MIB = 2**20
_GIB = 2**30
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.")


# --------------------------------------------------------------------------- GPU detection


@dataclass(frozen=True)
class GPU:
    """One NVIDIA GPU as the driver reports it (bytes, not MiB)."""

    index: int
    name: str
    total_bytes: int
    free_bytes: int


def _run_command(cmd: list[str]) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=True).stdout


def _gpus_from_nvml() -> Optional[list[GPU]]:
    """GPUs through NVML, or None when pynvml is missing or NVML cannot start."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # ImportError, or NVMLError: no driver, no device, library not found
        return None
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            name = name.decode(errors="replace") if isinstance(name, bytes) else str(name)  # older pynvml: bytes
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(GPU(i, name, int(mem.total), int(mem.free)))
        return gpus
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _parse_nvidia_smi(text: str) -> list[GPU]:
    """Parse ``index, name, total MiB, free MiB`` lines; lines that do not parse are skipped."""
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4:
            continue
        try:
            index, total, free = int(parts[0]), float(parts[-2]), float(parts[-1])
        except ValueError:  # "[N/A]", a header or an error text
            continue
        name = ", ".join(parts[1:-2])
        gpus.append(GPU(index, name, int(total * _MIB), int(free * _MIB)))
    return gpus


def detect_gpus(run: Callable[[list[str]], str] | None = None) -> list[GPU]:
    """NVIDIA GPUs with their total and free memory; [] when there are none. Never raises.

    Without ``run``, NVML (``pynvml``) is tried first, then ``nvidia-smi`` with a 5 s timeout.
    A ``run`` callable replaces the ``nvidia-smi`` call (NVML is then skipped): it gets the
    command as a list and returns its standard output.
    """
    if run is None:
        gpus = _gpus_from_nvml()
        if gpus is not None:
            return gpus
        run = _run_command
    try:
        text = run(list(NVIDIA_SMI_QUERY))
    except Exception:  # FileNotFoundError, CalledProcessError, TimeoutExpired, anything a runner raises
        return []
    return _parse_nvidia_smi(text or "")


def gpu_offload_supported() -> bool:
    """Whether the installed llama.cpp can offload layers to a GPU (False if llama_cpp is missing)."""
    try:
        import llama_cpp
    except Exception:  # ImportError, or OSError when its shared library cannot load
        return False
    supports = getattr(llama_cpp, "llama_supports_gpu_offload", None)
    return bool(supports()) if supports is not None else False


# --------------------------------------------------------------------------- memory estimate


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a model needs, split the way llama.cpp places them.

    ``layer_bytes`` already include each block's KV cache share; ``kv_cache_bytes`` is their
    total, for display (it is not added again). ``total_bytes`` is everything (weights, KV
    cache, compute buffer); ``gpu_bytes(n)`` is what ``n_gpu_layers = n`` puts in VRAM.
    """

    layer_bytes: tuple[int, ...]
    output_bytes: int
    input_bytes: int
    kv_cache_bytes: int
    compute_bytes: int

    @property
    def n_layers(self) -> int:
        return len(self.layer_bytes)

    @property
    def total_bytes(self) -> int:
        return sum(self.layer_bytes) + self.output_bytes + self.input_bytes + self.compute_bytes

    def gpu_bytes(self, n_gpu_layers: int) -> int:
        """VRAM for the last ``n_gpu_layers`` blocks (+ the output layer past ``n_layers``)."""
        n = min(max(n_gpu_layers, 0), self.n_layers + 1)
        if n == 0:
            return 0
        blocks = min(n, self.n_layers)
        used = sum(self.layer_bytes[self.n_layers - blocks:]) + self.compute_bytes
        if n > self.n_layers:
            used += self.output_bytes
        return used


def _type_bytes(ggml_type: str, n_elements: int) -> int:
    """Bytes of ``n_elements`` values stored as ``ggml_type`` (blocks rounded up)."""
    import gguf

    try:
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[ggml_type.upper()]]
    except KeyError:
        raise ConfigError(f"unknown ggml type {ggml_type!r}; use one of F16, F32, Q8_0, Q4_0, ...") from None
    return -(-n_elements // block) * size


def _compute_bytes(n_batch: int, n_ctx: int, n_head: int, n_embd: int, n_vocab: int, n_ff: int) -> int:
    """Compute-buffer allowance: float32 activations of one ``n_batch``-token micro-batch.

    The largest tensors llama.cpp's graph holds are the attention scores ``KQ`` (n_ctx x n_batch
    x n_head, without flash attention), the logits (n_batch x n_vocab) and the FFN activations
    (gate and up, 2 x n_ff per token, plus a few n_embd-wide residuals). Their sum is an upper
    bound: ggml's allocator reuses memory between them, so the real buffer is a bit smaller.
    """
    per_token = n_ctx * n_head + n_vocab + 2 * n_ff + 4 * n_embd
    return 4 * n_batch * per_token


def _split_tensors(tensors: Sequence[TensorInfo], block_count: int) -> tuple[list[int], int, int]:
    """Weight bytes per block, of the output part and of the token embeddings."""
    layers = [0] * block_count
    output = inputs = 0
    has_output = any(t.name.startswith("output.") for t in tensors)
    for t in tensors:
        match = _BLOCK_RE.match(t.name)
        if match and int(match.group(1)) < block_count:
            layers[int(match.group(1))] += t.n_bytes
        elif t.name.startswith("token_embd."):
            inputs += t.n_bytes
            if not has_output and t.name == "token_embd.weight":
                output += t.n_bytes  # tied embeddings: llama.cpp duplicates them as the output layer
        else:
            output += t.n_bytes  # output.weight, output_norm.weight, rope_freqs, ...
    return layers, output, inputs


def _dim(tensors: Sequence[TensorInfo], names: tuple[str, ...], axis: int) -> int:
    for t in tensors:
        if t.name in names and len(t.shape) > axis:
            return int(t.shape[axis])
    return 0


def estimate_memory(tensors: Sequence[TensorInfo], *, block_count: int, n_ctx: int,
                    n_embd: int, n_head: int, n_head_kv: int, kv_type: str = "F16",
                    n_batch: int = DEFAULT_N_BATCH) -> MemoryEstimate:
    """Estimate a model's memory from its tensors, at ``n_ctx`` tokens of ``kv_type`` KV cache.

    The KV cache holds K and V for every block: 2 x n_ctx x (head_dim x n_head_kv) values, so
    grouped-query attention (n_head_kv < n_head) shrinks it by n_head / n_head_kv.
    """
    for label, value in (("block_count", block_count), ("n_ctx", n_ctx), ("n_embd", n_embd),
                         ("n_head", n_head), ("n_head_kv", n_head_kv), ("n_batch", n_batch)):
        if value <= 0:
            raise ConfigError(f"{label} must be a positive integer, got {value}; check the model metadata.")
    n_embd_kv = (n_embd // n_head) * n_head_kv
    kv_per_layer = 2 * _type_bytes(kv_type, n_ctx * n_embd_kv)
    weights, output, inputs = _split_tensors(tensors, block_count)
    n_vocab = _dim(tensors, ("token_embd.weight", "output.weight"), 1)
    n_ff = _dim(tensors, ("blk.0.ffn_up.weight",), 1)
    return MemoryEstimate(
        layer_bytes=tuple(w + kv_per_layer for w in weights), output_bytes=output, input_bytes=inputs,
        kv_cache_bytes=kv_per_layer * block_count,
        compute_bytes=_compute_bytes(min(n_batch, n_ctx), n_ctx, n_head, n_embd, n_vocab, n_ff),
    )


def estimate_for(info: GGUFInfo, n_ctx: int, kv_size: Optional[int] = None) -> MemoryEstimate:
    """``estimate_memory`` for a GGUF's metadata; without a tensor list the file size is spread evenly.
    ``kv_size`` is the KV cache's cells when they differ from ``n_ctx`` (slots sharing one pool)."""
    tensors: Sequence[TensorInfo] = info.tensors
    if not tensors and info.block_count > 0:
        share = info.size_bytes // info.block_count
        tensors = [TensorInfo(f"blk.{i}.weights", "F32", (1,), share) for i in range(info.block_count)]
    return estimate_memory(tensors, block_count=info.block_count, n_ctx=kv_size or n_ctx,
                           n_embd=info.embedding_length, n_head=info.head_count,
                           n_head_kv=info.head_count_kv or info.head_count)


# --------------------------------------------------------------------------- offload plan


@dataclass(frozen=True)
class OffloadPlan:
    """How many layers to offload, and why.

    ``fits_fully`` and ``vram_needed_bytes`` are about the whole model (all ``total_layers``), not
    the chosen count; ``vram_needed_bytes`` leaves out the reserve kept for the CUDA context.
    """

    n_gpu_layers: int
    total_layers: int
    fits_fully: bool
    vram_needed_bytes: int
    vram_free_bytes: int
    reason: str
    notices: tuple[str, ...] = ()


def _gib(n: int) -> str:
    return f"{n / _GIB:.1f} GiB"


def _parse_requested(requested: int | str) -> Optional[int]:
    """None for "auto", else the explicit layer count (-1 = all); digit strings are accepted."""
    if isinstance(requested, str) and requested.strip().lower() == "auto":
        return None
    if isinstance(requested, str) and re.fullmatch(r"\s*-?\d+\s*", requested):
        requested = int(requested)
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < -1:
        raise ConfigError(f"n_gpu_layers={requested!r} is not valid; use 'auto', -1 (all layers) or a layer count.")
    return requested


def _auto_layers(est: MemoryEstimate, free: int, reserve: int) -> int:
    n = est.n_layers + 1
    while n > 0 and est.gpu_bytes(n) + reserve > free:
        n -= 1
    return n


def _explicit_plan(n: int, total: int, est: MemoryEstimate, gpu: Optional[GPU], supported: bool,
                   reserve: int) -> tuple[str, list[str]]:
    notices: list[str] = []
    if n > 0 and not supported:
        notices.append(f"llama.cpp was built without GPU support; n_gpu_layers={n} will run on the CPU. "
                       f"For CUDA: {CUDA_INSTALL_HINT}")
    elif n > 0 and gpu is None:
        notices.append(f"no NVIDIA GPU found; n_gpu_layers={n} only helps with another GPU backend (Metal, ROCm).")
    elif n > 0 and gpu is not None and est.gpu_bytes(n) + reserve > gpu.free_bytes:
        notices.append(f"{n} layers need about {_gib(est.gpu_bytes(n))} of VRAM but GPU {gpu.index} has "
                       f"{_gib(gpu.free_bytes)} free; loading may run out of memory: use n_gpu_layers='auto'.")
    return f"n_gpu_layers={n} of {total} was requested explicitly.", notices


def _auto_plan(total: int, est: MemoryEstimate, gpu: Optional[GPU], supported: bool,
               reserve: int) -> tuple[int, str, list[str]]:
    if not supported:
        return 0, "llama.cpp was built without GPU support, so every layer runs on the CPU.", [
            f"llama.cpp was built without GPU support; running on the CPU. For CUDA: {CUDA_INSTALL_HINT}"]
    if gpu is None:
        return 0, "no NVIDIA GPU found, so every layer runs on the CPU.", [
            "for a non-NVIDIA GPU (Metal, ROCm, Vulkan) set n_gpu_layers=-1 to offload every layer."]
    n = _auto_layers(est, gpu.free_bytes, reserve)
    where = f"GPU {gpu.index} ({gpu.name}) has {_gib(gpu.free_bytes)} free"
    if n == total:
        return n, f"all {total} layers fit: {where} and the model needs about {_gib(est.gpu_bytes(n))}.", []
    hint = (f"the full model needs about {_gib(est.gpu_bytes(total))} of VRAM; a smaller quantization "
            "or a shorter context would let more layers fit.")
    if n == 0:
        return 0, f"not one layer fits: {where}, so every layer runs on the CPU.", [hint]
    return n, f"{n} of {total} layers fit: {where}; the rest run on the CPU.", [hint]


def plan_offload(info: GGUFInfo, n_ctx: int, requested: int | str = "auto", *,
                 gpus: Sequence[GPU] | None = None, offload_supported: bool | None = None,
                 reserve_bytes: int = 512 * _MIB, kv_size: Optional[int] = None) -> OffloadPlan:
    """Choose ``n_gpu_layers`` for ``info`` at ``n_ctx``: "auto", or an explicit count (-1 = all).
    ``kv_size`` is the KV cache's cells, shared by every slot (default ``n_ctx``).

    "auto" keeps ``reserve_bytes`` free for the CUDA context and cuBLAS workspace, and plans
    for the GPU with the most free memory (see the module docstring about several GPUs).
    """
    wanted = _parse_requested(requested)
    total = info.block_count + 1
    est = estimate_for(info, n_ctx, kv_size)
    supported = gpu_offload_supported() if offload_supported is None else bool(offload_supported)
    found = list(detect_gpus() if gpus is None else gpus)
    gpu = max(found, key=lambda g: g.free_bytes) if found else None
    free = gpu.free_bytes if gpu is not None else 0
    needed = est.gpu_bytes(total)
    fits = supported and gpu is not None and needed + reserve_bytes <= free
    if wanted is None:
        n, reason, notices = _auto_plan(total, est, gpu, supported, reserve_bytes)
    else:
        n = total if wanted == -1 else min(wanted, total)
        reason, notices = _explicit_plan(n, total, est, gpu, supported, reserve_bytes)
    return OffloadPlan(n_gpu_layers=n, total_layers=total, fits_fully=fits, vram_needed_bytes=needed,
                       vram_free_bytes=free, reason=reason, notices=tuple(notices))


# --------------------------------------------------------------------------- Llama-2 reference models

# size -> (n_embd, n_layer, n_head, n_head_kv, n_ff); vocabulary 32000 for all three.
_LLAMA2_SHAPES = {
    "7b": (4096, 32, 32, 32, 11008),
    "13b": (5120, 40, 40, 40, 13824),
    "70b": (8192, 80, 64, 8, 28672),
}
_LLAMA2_VOCAB = 32000
_LLAMA2_QUANTS = {"f16": "F16", "q8_0": "Q8_0", "q4_k_m": "Q4_K_M"}


def _use_more_bits(i_layer: int, n_layer: int) -> bool:
    """llama.cpp's choice of the blocks that get more bits in the *_K_M mixes."""
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


def _q4_k_m_type(kind: str, i_layer: int, n_layer: int, is_70b: bool) -> str:
    """The ggml type llama_model_quantize gives a 2-D Llama tensor for LLAMA_FTYPE_MOSTLY_Q4_K_M."""
    if kind == "output":
        return "Q6_K"
    if kind in ("attn_v", "ffn_down") and _use_more_bits(i_layer, n_layer):
        return "Q6_K"
    if kind == "attn_v" and is_70b:
        return "Q5_K"  # llama.cpp bumps the 70B's small GQA attn_v from Q4_K to Q5_K
    return "Q4_K"


def _llama2_layout(size: str) -> list[tuple[str, str, tuple[int, ...], int]]:
    """(name, kind, GGUF shape, layer) of every tensor, named as llama.cpp names them."""
    n_embd, n_layer, n_head, n_head_kv, n_ff = _LLAMA2_SHAPES[size]
    n_embd_kv = n_embd // n_head * n_head_kv
    out = [("token_embd.weight", "token_embd", (n_embd, _LLAMA2_VOCAB), -1)]
    for i in range(n_layer):
        for kind, shape in (("attn_norm", (n_embd,)), ("attn_q", (n_embd, n_embd)),
                            ("attn_k", (n_embd, n_embd_kv)), ("attn_v", (n_embd, n_embd_kv)),
                            ("attn_output", (n_embd, n_embd)), ("ffn_norm", (n_embd,)),
                            ("ffn_gate", (n_embd, n_ff)), ("ffn_up", (n_embd, n_ff)),
                            ("ffn_down", (n_ff, n_embd))):
            out.append((f"blk.{i}.{kind}.weight", kind, shape, i))
    out.append(("output_norm.weight", "output_norm", (n_embd,), -1))
    out.append(("output.weight", "output", (n_embd, _LLAMA2_VOCAB), -1))
    return out


def _check_llama2(size: str, quant: str) -> tuple[str, str]:
    size, quant = size.strip().lower(), quant.strip().lower()
    if size not in _LLAMA2_SHAPES:
        raise ConfigError(f"unknown Llama-2 size {size!r}; use one of {', '.join(_LLAMA2_SHAPES)}.")
    if quant not in _LLAMA2_QUANTS:
        raise ConfigError(f"unknown quantization {quant!r}; use one of {', '.join(_LLAMA2_QUANTS)}.")
    return size, quant


def llama2_tensors(size: str, quant: str) -> list[TensorInfo]:
    """The tensors of Meta's Llama-2 ``size`` ("7b", "13b", "70b") as a ``quant`` GGUF.

    ``quant`` is "f16", "q8_0" or "q4_k_m"; 1-D norms stay F32 in all three, as in llama.cpp.
    """
    size, quant = _check_llama2(size, quant)
    n_layer = _LLAMA2_SHAPES[size][1]
    tensors = []
    for name, kind, shape, i_layer in _llama2_layout(size):
        if len(shape) == 1:
            ggml_type = "F32"
        elif quant == "q4_k_m":
            ggml_type = _q4_k_m_type(kind, i_layer, n_layer, size == "70b")
        else:
            ggml_type = _LLAMA2_QUANTS[quant]
        tensors.append(TensorInfo(name, ggml_type, shape, _type_bytes(ggml_type, math.prod(shape))))
    return tensors


def llama2_info(size: str, quant: str, context_length: int = 4096) -> GGUFInfo:
    """A ``GGUFInfo`` for Llama-2 ``size``/``quant`` built from ``llama2_tensors`` (no file behind it)."""
    size, quant = _check_llama2(size, quant)
    n_embd, n_layer, n_head, n_head_kv, _ = _LLAMA2_SHAPES[size]
    tensors = tuple(llama2_tensors(size, quant))
    return GGUFInfo(
        path=Path(f"llama-2-{size}.{quant}.gguf"), size_bytes=sum(t.n_bytes for t in tensors),
        architecture="llama", name=f"Llama-2-{size.upper()}", quantization=_LLAMA2_QUANTS[quant],
        context_length=context_length, block_count=n_layer, embedding_length=n_embd,
        head_count=n_head, head_count_kv=n_head_kv, vocab_size=_LLAMA2_VOCAB, chat_template=None,
        bos_token_id=1, eos_token_id=2, add_bos_token=True, tokenizer_model="llama",
        license="llama2", tensors=tensors,
    )
