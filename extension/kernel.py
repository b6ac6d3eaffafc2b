"""Which engine a kernel's ``%llama`` magics and chat widgets use.

A kernel started by a Jupyter server that runs the llamalab extension inherits
``LLAMALAB_SERVER_URL`` and ``LLAMALAB_SERVER_KEY`` (see ``kernel_access``): it then talks
to the server's model through its OpenAI-compatible route with a ``RemoteEngine``, and
loads nothing itself. Anywhere else (a kernel started by another server, a terminal
IPython, a script) the model is loaded in this process with ``LocalEngine``, one model at
a time: asking for another closes the first.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Callable, Literal, Optional, Union

from llamalab import ConfigError, Engine, LocalOptions, default_model_name, open_engine

from .kernel_access import SERVER_KEY_ENV, SERVER_URL_ENV

__all__ = ["BackendSettings", "KernelBackend", "gpu_layers", "kernel_backend"]

Mode = Literal["auto", "server", "local"]


def gpu_layers(value: Union[int, str]) -> Union[int, str]:
    """A GPU layer setting as the engines take it: "auto", -1 (all) or a count; ValueError otherwise."""
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            return "auto"
        try:
            value = int(value)
        except ValueError:
            raise ValueError(f'n_gpu_layers must be "auto" or a number, got {value!r}') from None
    if value < -1:
        raise ValueError(f"n_gpu_layers must be -1 (all), 0 or more, got {value}")
    return value


@dataclass(frozen=True)
class BackendSettings:
    mode: Mode = "auto"
    n_ctx: int = 4096
    n_gpu_layers: Union[int, str] = "auto"


class KernelBackend:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._local: Optional[tuple[tuple[str, int, Union[int, str]], Engine]] = None
        self._remote: dict[tuple[str, str], Engine] = {}

    @staticmethod
    def server_url() -> Optional[str]:
        return os.environ.get(SERVER_URL_ENV) or None

    def uses_server(self, settings: BackendSettings) -> bool:
        if settings.mode == "local":
            return False
        if settings.mode == "server" and not self.server_url():
            raise ConfigError(f"no llamalab server for this kernel ({SERVER_URL_ENV} is not set): start the "
                              "kernel from a Jupyter server running the llamalab extension, or use the local backend.")
        return self.server_url() is not None

    def describe_choice(self, settings: BackendSettings) -> str:
        return f"the Jupyter server's model at {self.server_url()}" if self.uses_server(settings) \
            else "a model loaded in this kernel"

    def engine(self, model: Optional[str], settings: BackendSettings,
               on_notice: Optional[Callable[[str], None]] = None) -> Engine:
        """The engine for ``model`` (None: the server's default, or the demo model locally)."""
        with self._lock:
            if self.uses_server(settings):
                url = self.server_url() or ""
                key = (url, model or "")
                if key not in self._remote:
                    self._remote[key] = open_engine(model, remote_url=url, api_key=os.environ.get(SERVER_KEY_ENV))
                return self._remote[key]
            wanted = (model or default_model_name(), settings.n_ctx, settings.n_gpu_layers)
            if self._local is not None and self._local[0] == wanted:
                return self._local[1]
            if self._local is not None:
                self._local[1].close()
                self._local = None
            engine = open_engine(model, options=LocalOptions(n_ctx=settings.n_ctx, n_gpu_layers=settings.n_gpu_layers),
                                 name=wanted[0], on_notice=on_notice)
            self._local = (wanted, engine)
            return engine

    def close(self) -> None:
        with self._lock:
            engines = [e for e in self._remote.values()] + ([self._local[1]] if self._local else [])
            self._remote, self._local = {}, None
        for engine in engines:
            engine.close()


_backend: Optional[KernelBackend] = None
_backend_lock = threading.Lock()


def kernel_backend() -> KernelBackend:
    """The kernel's one backend, shared by the magics and every chat widget."""
    global _backend
    with _backend_lock:
        if _backend is None:
            _backend = KernelBackend()
        return _backend
