"""``open_engine``: the one way a face gets an ``Engine`` from a model name or a server URL.

The command line, the Jupyter extension's engine pool, a kernel without a llamalab server and
the language server all open engines the same way: a ``remote_url`` gives a ``RemoteEngine``
(the server names its models), anything else is located in the store or the catalog (the
default model is pulled on first use) and loaded by a ``LocalEngine`` with ``LocalOptions``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Union

from .base import Engine

if TYPE_CHECKING:
    from ..progress import ProgressCallback
    from ..pulls import Notice
    from ..store import ModelStore

__all__ = ["LocalOptions", "open_engine"]


@dataclass(frozen=True)
class LocalOptions:
    """How a local model is loaded (``LocalEngine``'s arguments; None: its default)."""

    n_ctx: int = 4096
    n_gpu_layers: Union[int, str] = "auto"
    n_threads: Optional[int] = None
    n_parallel: Optional[int] = None
    kv_size: Optional[int] = None
    prompt_cache_mb: Optional[float] = None
    chat_format: str = "auto"
    max_queued: Optional[int] = None


def open_engine(model: Optional[str] = None, *, remote_url: Optional[str] = None, api_key: Optional[str] = None,
                options: LocalOptions = LocalOptions(), name: Optional[str] = None,
                store: "Optional[ModelStore]" = None, progress: "Optional[ProgressCallback]" = None,
                on_notice: "Optional[Notice]" = None) -> Engine:
    """An engine for ``model`` (a store name, catalog reference or GGUF path; None: the default
    model, or the remote server's), served by ``remote_url`` when given, else loaded here.
    ``name`` is what the local engine calls its model (default: ``model`` or the default's name)."""
    if remote_url:
        from .remote import RemoteEngine

        return RemoteEngine(remote_url, model=model or None, api_key=api_key)
    from ..pulls import default_model_name, locate
    from .local import LocalEngine

    path = locate(model, store=store, progress=progress, on_notice=on_notice)
    extra = {key: value for key, value in (("n_parallel", options.n_parallel), ("kv_size", options.kv_size),
                                           ("prompt_cache_mb", options.prompt_cache_mb),
                                           ("max_queued", options.max_queued)) if value is not None}
    return LocalEngine(path, n_ctx=options.n_ctx, n_gpu_layers=options.n_gpu_layers, n_threads=options.n_threads,
                       chat_format=options.chat_format, name=name or model or default_model_name(), **extra)
