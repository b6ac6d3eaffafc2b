"""llamalab.extension: llamalab inside Jupyter.

- a jupyter_server extension (``LlamalabExtension``, in ``app``) that loads one model per
  server and serves it under ``/llamalab/``: REST routes, a chat WebSocket and an
  OpenAI-compatible surface (``/llamalab/v1``) that kernels reuse;
- IPython magics: ``%load_ext llamalab`` then ``%llama`` / ``%%llama`` (``magics``);
- an ipywidgets chat: ``llamalab.chat()`` or ``%llama chat`` (``widgets``).

Importing this package is light: jupyter_server, IPython and ipywidgets load only when the
part that needs them is used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["chat", "load_ipython_extension", "unload_ipython_extension"]


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .app import LlamalabExtension

    return [{"module": "llamalab.extension", "app": LlamalabExtension}]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext llamalab`` (or ``llamalab.extension``): register ``%llama`` and ``%%llama``."""
    from .magics import LlamaMagics, keep_question_marks

    ipython.register_magics(LlamaMagics)
    cleanup = ipython.input_transformers_cleanup  # they run before IPython's `obj?` help syntax
    if keep_question_marks not in cleanup:
        cleanup.append(keep_question_marks)


def unload_ipython_extension(ipython: Any) -> None:
    from .kernel import kernel_backend

    kernel_backend().close()


def chat(model: Any = None, *, system: Any = None, engine: Any = None, **kwargs: Any) -> Any:
    """A chat widget (history, input, Send and Stop, streamed answers, the model's name).

    In a kernel started by a Jupyter server running this extension it uses the server's
    model; otherwise it loads ``model`` (default: the demo model) in the kernel. Pass an
    ``engine`` to chat with any ``llamalab.Engine``. Show it by leaving it as a cell's last
    expression or with ``display()``."""
    from .widgets import ChatWidget

    return ChatWidget(model=model, system=system, engine=engine, **kwargs)
