"""The ``doctor`` report: the llama.cpp build, the GPUs, and what fits for each stored model.

``build_report`` gathers facts (no printing); ``format_report`` renders them as the text
``llamalab doctor`` shows. The Jupyter extension serves the same report as JSON. With a remote
server (``remote_url``, default ``$LLAMALAB_REMOTE_URL``) the report also says what it serves and
which of llama-server's routes it offers (token prompts, ``/infill``, tokenize) with the fallbacks,
as notices (so the extension's JSON reply carries them without a schema change).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

from . import hardware
from .errors import LlamalabError
from .gguf_info import GGUFInfo, read_gguf_info
from .store import ModelStore

__all__ = ["DoctorReport", "ModelFit", "RemoteServer", "build_report", "fit_model", "format_report",
           "probe_remote", "remote_lines"]


@dataclass(frozen=True)
class ModelFit:
    name: str
    quantization: str
    file_bytes: int
    needed_bytes: int  # weights + KV cache + compute buffers, all layers on the GPU
    n_gpu_layers: int  # what "auto" would choose here
    total_layers: int
    fits_fully: bool
    problem: Optional[str] = None  # the file is missing or unreadable


@dataclass(frozen=True)
class RemoteServer:
    """The remote model server llamalab is pointed at, as probed by ``RemoteEngine``."""

    url: str
    server: Optional[str] = None  # "llama-server" or "openai-compatible"
    models: list[str] = field(default_factory=list)
    context_length: Optional[int] = None
    slots: Optional[int] = None
    token_prompts: bool = False
    infill: bool = False
    tokenize: bool = False
    notes: list[str] = field(default_factory=list)  # missing routes and their fallbacks
    problem: Optional[str] = None  # unreachable, refused, ...


@dataclass(frozen=True)
class DoctorReport:
    llamalab_version: str
    llama_cpp_version: Optional[str]
    gpu_offload_supported: bool
    system_info: str
    gpus: list[hardware.GPU]
    n_ctx: int
    store_root: str
    models: list[ModelFit] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    kv_size: Optional[int] = None  # KV cells shared by all slots (None: n_ctx)
    remote: list[str] = field(default_factory=list)  # the notices about the remote server (also in notices)


def _llama_cpp_build() -> tuple[Optional[str], str]:
    try:
        import llama_cpp
    except ImportError:
        return None, "llama_cpp is not installed: pip install llama-cpp-python"
    info = llama_cpp.llama_print_system_info()
    return llama_cpp.__version__, (info.decode() if isinstance(info, bytes) else str(info)).strip()


def fit_model(name: str, info: GGUFInfo, n_ctx: int, gpus: Sequence[hardware.GPU], supported: bool,
              kv_size: Optional[int] = None) -> ModelFit:
    """What ``auto`` offload would do with ``info`` on these GPUs at context ``n_ctx``, with
    ``kv_size`` KV cells for all slots together (default: ``n_ctx``, as ``LocalEngine``)."""
    ctx = min(n_ctx, info.context_length) if info.context_length else n_ctx
    plan = hardware.plan_offload(info, ctx, "auto", gpus=gpus, offload_supported=supported,
                                 kv_size=max(kv_size, ctx) if kv_size else None)
    return ModelFit(name=name, quantization=info.quantization, file_bytes=info.size_bytes,
                    needed_bytes=plan.vram_needed_bytes, n_gpu_layers=plan.n_gpu_layers,
                    total_layers=plan.total_layers, fits_fully=plan.fits_fully)


def _fit_stored(name: str, path: str, n_ctx: int, gpus: Sequence[hardware.GPU], supported: bool,
                kv_size: Optional[int]) -> ModelFit:
    """One model's line of the report; a file that cannot be read or sized (odd metadata) gets
    its problem on that line instead of failing the whole report."""
    quantization = "?"
    try:
        info = read_gguf_info(path)
        quantization = info.quantization
        return fit_model(name, info, n_ctx, gpus, supported, kv_size)
    except LlamalabError as exc:
        return ModelFit(name, quantization, 0, 0, 0, 0, False, problem=str(exc))


def probe_remote(url: str, api_key: Optional[str] = None) -> RemoteServer:
    """What the server at ``url`` serves and offers; a server that cannot be asked gets its problem."""
    from .engine.remote import RemoteEngine

    try:
        engine = RemoteEngine(url, api_key=api_key, timeout=30)
    except LlamalabError as exc:
        return RemoteServer(url=RemoteEngine.redact_url(url), problem=str(exc))
    try:
        models = [str(m.get("id")) for m in engine._models()]
        caps = engine.capabilities()
        description = engine.describe()
        return RemoteServer(url=engine.shown_url, server=caps.server, models=models,
                            context_length=description.context_length, slots=description.n_parallel,
                            token_prompts=caps.token_prompts, infill=caps.infill, tokenize=caps.tokenize,
                            notes=list(caps.missing))
    except LlamalabError as exc:
        return RemoteServer(url=engine.shown_url, problem=str(exc))
    finally:
        engine.close()


def build_report(*, n_ctx: int = 4096, kv_size: Optional[int] = None, store: Optional[ModelStore] = None,
                 gpus: Optional[Sequence[hardware.GPU]] = None, offload_supported: Optional[bool] = None,
                 remote_url: Optional[str] = None, remote_api_key: Optional[str] = None) -> DoctorReport:
    from . import __version__

    store = store or ModelStore()
    version, system_info = _llama_cpp_build()
    supported = hardware.gpu_offload_supported() if offload_supported is None else offload_supported
    found = list(hardware.detect_gpus() if gpus is None else gpus)
    notices = []
    if not supported:
        notices.append("This llama.cpp build has no GPU support, so models run on the CPU. "
                       f"For an NVIDIA GPU install the CUDA build: {hardware.CUDA_INSTALL_HINT}")
    elif not found:
        notices.append("llama.cpp can offload to a GPU but no NVIDIA GPU was found (nvidia-smi/NVML).")
    fits = [_fit_stored(m.name, m.path, n_ctx, found, supported, kv_size) for m in store.list()]
    url = remote_url or os.environ.get("LLAMALAB_REMOTE_URL")
    remote = remote_lines(probe_remote(url, remote_api_key or os.environ.get("LLAMALAB_REMOTE_API_KEY"))) if url else []
    return DoctorReport(llamalab_version=__version__, llama_cpp_version=version,
                        gpu_offload_supported=supported, system_info=system_info, gpus=found,
                        n_ctx=n_ctx, store_root=str(store.root), models=fits, notices=notices + remote,
                        kv_size=kv_size, remote=remote)


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


def format_report(report: DoctorReport) -> str:
    lines = [
        f"llamalab {report.llamalab_version}",
        f"llama-cpp-python {report.llama_cpp_version or 'missing'}; GPU offload: "
        f"{'yes' if report.gpu_offload_supported else 'no (CPU-only build)'}",
        f"build: {report.system_info}",
        "",
    ]
    if report.gpus:
        lines.append("GPUs:")
        lines += [f"  [{g.index}] {g.name}: {_gb(g.free_bytes)} free of {_gb(g.total_bytes)}" for g in report.gpus]
    else:
        lines.append("GPUs: none found")
    kv = report.kv_size or report.n_ctx
    lines += ["", f"Models in {report.store_root} (context {report.n_ctx} tokens, KV cache {kv} tokens "
                  "shared by the slots):"]
    if not report.models:
        lines.append("  none yet: `llamalab models pull default`")
    width = max((len(m.name) for m in report.models), default=0)
    for m in report.models:
        if m.problem:
            lines.append(f"  {m.name}: {m.problem}")
            continue
        where = ("all on GPU" if m.fits_fully
                 else f"{m.n_gpu_layers}/{m.total_layers} layers on GPU" if m.n_gpu_layers else "CPU only")
        lines.append(f"  {m.name:{width}}  {m.quantization:8} file {_gb(m.file_bytes):>8}  needs {_gb(m.needed_bytes):>8}"
                     f"  -> {where}")
    if report.notices:
        lines.append("")
        lines += [f"note: {n}" for n in report.notices]
    return "\n".join(lines)


def remote_lines(remote: RemoteServer) -> list[str]:
    """The remote server as one line (plus one per missing route), for the report's notices."""
    if remote.problem:
        return [f"remote server {remote.url}: {remote.problem}"]
    yes = {True: "yes", False: "no"}
    line = (f"remote server {remote.url} ({remote.server}) serves {', '.join(remote.models) or 'no model'}; "
            f"context {remote.context_length or '?'} tokens, {remote.slots or '?'} slots; token prompts "
            f"{yes[remote.token_prompts]}, /infill {yes[remote.infill]}, tokenize {yes[remote.tokenize]}")
    return [line] + list(remote.notes)
