"""What a running ``llamalab serve`` knows: its settings (``ServeConfig``), the keys, the one
model (an ``EngineManager``, as in the Jupyter extension), the metrics, and how many requests each
key has running."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Optional, Union

from llamalab import KeyRing, ModelStore

from ..manager import EngineManager, ManagerConfig
from .metrics import ServeMetrics

__all__ = ["ServeConfig", "ServeState"]


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """``llamalab serve``'s options (see ``llamalab serve --help``)."""

    model: str = "default"
    host: str = "127.0.0.1"
    port: int = 8080
    keys_file: Optional[Path] = None  # None: $LLAMALAB_HOME/serve-keys.json
    n_ctx: int = 4096
    n_parallel: int = 4
    n_threads: Optional[int] = None
    n_gpu_layers: Union[int, str] = "auto"
    kv_size: Optional[int] = None
    prompt_cache_mb: int = 1024
    max_queued: int = 64
    max_prompt_chars: int = 200_000
    max_tokens_limit: int = 4096
    max_body_bytes: int = 8 << 20
    stream_write_timeout_s: float = 60.0
    stop_grace_s: float = 30.0  # how long a stop lets running generations finish before cancelling them
    certfile: Optional[Path] = None
    keyfile: Optional[Path] = None

    def manager_config(self) -> ManagerConfig:
        return ManagerConfig(default_model=self.model, n_ctx=self.n_ctx, n_gpu_layers=self.n_gpu_layers,
                             n_threads=self.n_threads, n_parallel=self.n_parallel, kv_size=self.kv_size,
                             prompt_cache_mb=self.prompt_cache_mb, allowed_models=(self.model,),
                             max_queued=self.max_queued, max_prompt_chars=self.max_prompt_chars,
                             max_tokens_limit=self.max_tokens_limit, default_max_tokens=min(512, self.max_tokens_limit))


class ServeState:
    def __init__(self, config: ServeConfig, store: Optional[ModelStore] = None,
                 log: Optional[logging.Logger] = None) -> None:
        self.config = config
        self.log = log or logging.getLogger("llamalab.serve")
        self.keys = KeyRing(config.keys_file)
        self.manager = EngineManager(config.manager_config(), store or ModelStore(), self.log)
        self.metrics = ServeMetrics(self.manager.engine_stats, lambda: self.manager.active_count)
        self.model_name = config.model
        self.loaded = False
        self.load_error: Optional[str] = None
        self.stopping = False
        self._running: dict[str, int] = {}

    def running_for(self, user: str) -> int:
        return self._running.get(user, 0)

    def started(self, user: str) -> None:
        self._running[user] = self._running.get(user, 0) + 1

    def ended(self, user: str) -> None:
        left = self._running.get(user, 0) - 1
        if left > 0:
            self._running[user] = left
        else:
            self._running.pop(user, None)

    def health(self) -> tuple[str, int]:
        if self.stopping:
            return "stopping", 503
        if self.load_error:
            return "error", 503
        return ("ok", 200) if self.loaded else ("loading", 503)
