"""``EngineManager``: the one model a Jupyter server process serves, shared by every client.

The chat WebSocket, the OpenAI-compatible routes (and through them kernels' ``%llama``
magics and a local language server) all start their generations here, so the weights are
in memory once. The model is loaded lazily, on a worker thread, by the first request that
needs it (or at start with ``preload``). A request for another model switches: the
generations still running on the old one are cancelled (they end with
``finish_reason == "cancelled"``), the old engine is closed, then the new one loads.

Starting a generation and switching models take one asyncio lock, so an engine is never
closed between being chosen and being given its request; the generation itself runs
without the lock, on one of ``LocalEngine``'s slots (``n_parallel`` requests decoded together,
interactive completions first). ``max_queued`` bounds how many run or
wait at once (more get ``BusyError``).

With ``remote_url`` set the manager loads nothing: it hands requests to a ``RemoteEngine``
per model name, and the server becomes a front for a shared inference server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path
from typing import Awaitable, Callable, Optional, Sequence, Union

from llamalab import (AsyncTokenStream, Engine, GenerationParams, GenerationResult, LocalOptions, ModelStore,
                      TokenStream, default_model_name, open_engine, resolve)

from .errors import BusyError, ModelNotAllowedError, PromptTooLongError
from .messages import LoadedModel, ModelChangedMessage, SamplingParams

__all__ = ["EngineManager", "Generation", "ManagerConfig"]

log = logging.getLogger(__name__)

Listener = Callable[[ModelChangedMessage], None]


@dataclasses.dataclass
class ManagerConfig:
    """What the extension's traitlets say about the model (see ``LlamalabExtension``)."""

    default_model: Optional[str] = None
    n_ctx: int = 4096
    n_gpu_layers: Union[int, str] = "auto"
    n_threads: Optional[int] = None
    n_parallel: int = 4
    kv_size: Optional[int] = None
    prompt_cache_mb: int = 1024
    remote_url: Optional[str] = None
    remote_api_key: Optional[str] = None
    allowed_models: tuple[str, ...] = ()
    system_prompt: str = ""
    max_queued: int = 16
    max_prompt_chars: int = 200_000
    max_tokens_limit: int = 4096
    default_max_tokens: int = 512


class Generation:
    """One generation on the shared model: ``async for piece in generation``; ``result`` at
    the end. Always end it with ``aclose()`` (it frees the queue slot)."""

    def __init__(self, stream: TokenStream, engine: Engine, model: str,
                 on_end: Callable[["Generation"], None]) -> None:
        self.model = model
        self.engine = engine
        self._tokens = stream
        self._stream = AsyncTokenStream(lambda: stream)
        self._on_end = on_end
        self._ended = False

    @property
    def result(self) -> Optional[GenerationResult]:
        return self._stream.result

    def __aiter__(self) -> "Generation":
        return self

    async def __anext__(self) -> str:
        try:
            return await self._stream.__anext__()
        except BaseException:
            self._end()
            raise

    def cancel(self) -> None:
        self._tokens.cancel()  # also when nobody has started reading it yet
        self._stream.cancel()

    async def aclose(self) -> None:
        if self.result is None:
            self.cancel()
        self._end()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._on_end(self)


class EngineManager:
    def __init__(self, config: ManagerConfig, store: ModelStore, log: logging.Logger = log) -> None:
        self.log = log
        self.config = config
        self.store = store
        self._lock = asyncio.Lock()
        self._engine: Optional[Engine] = None  # the local model
        self._name: Optional[str] = None
        self._described: Optional[LoadedModel] = None
        self._remote: dict[str, Engine] = {}
        self._remote_names: dict[str, str] = {}  # requested name -> the name the server reports
        self._active: set[Generation] = set()
        self._listeners: list[Listener] = []
        self._closed = False

    # -- names ------------------------------------------------------------------------
    @property
    def remote(self) -> bool:
        return bool(self.config.remote_url)

    def default_model(self) -> str:
        """The reference a request without a model gets."""
        if self.config.default_model:
            return self.config.default_model
        if self.config.allowed_models:
            return self.config.allowed_models[0]
        return "" if self.remote else default_model_name()

    def canonical(self, model: Optional[str]) -> str:
        """The store name (or path) ``model`` stands for; checks ``allowed_models``."""
        ref = (model or "").strip() or self.default_model()
        if self.remote:
            name = ref
        elif ref == self._name:
            return ref
        elif self.store.find(ref) is not None:
            name = ref
        elif Path(ref).expanduser().is_file():
            name = str(Path(ref).expanduser().resolve())
        else:
            name = resolve(ref).store_name  # ModelNotFoundError names the known models
        allowed = self.config.allowed_models
        if allowed and ref not in allowed and name not in allowed:
            raise ModelNotAllowedError(f"'{ref}' is not one of the models this server offers "
                                       f"({', '.join(allowed)}); ask its administrator to allow it.")
        return name

    def is_allowed(self, name: str) -> bool:
        return not self.config.allowed_models or name in self.config.allowed_models

    # -- state --------------------------------------------------------------------------
    @property
    def loaded(self) -> Optional[LoadedModel]:
        return self._described

    @property
    def active_count(self) -> int:
        return len(self._active)

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` when the model changes; returns the function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _notify(self) -> None:
        message = ModelChangedMessage(model=self._described)
        for listener in list(self._listeners):
            try:
                listener(message)
            except Exception:  # a closing socket must not stop the others
                self.log.debug("model listener failed", exc_info=True)

    # -- loading ----------------------------------------------------------------------
    def _load(self, name: str) -> Engine:
        c = self.config
        self.log.info("llamalab: loading %s (n_ctx=%s, n_gpu_layers=%s, n_parallel=%s)", name, c.n_ctx,
                      c.n_gpu_layers, c.n_parallel)
        options = LocalOptions(n_ctx=c.n_ctx, n_gpu_layers=c.n_gpu_layers, n_threads=c.n_threads,
                               n_parallel=c.n_parallel, kv_size=c.kv_size, prompt_cache_mb=c.prompt_cache_mb,
                               max_queued=c.max_queued + 8)
        return open_engine(name, options=options, store=self.store, on_notice=self.log.info)

    async def _ensure(self, name: str) -> Engine:
        """The engine for ``name``, loading or switching to it (the lock is held)."""
        if self._closed:
            raise BusyError("the Jupyter server is shutting down; try again once it restarts.")
        if self.remote:
            engine = self._remote.get(name)
            if engine is None:
                engine = open_engine(name, remote_url=self.config.remote_url, api_key=self.config.remote_api_key)
                try:
                    described = await asyncio.to_thread(_describe, engine)  # is it there?
                except BaseException:
                    engine.close()
                    raise
                self._remote[name], self._remote_names[name] = engine, described.name
                if name == self.default_model():
                    self._described = described
                    self._notify()
            return engine
        if self._engine is not None and self._name == name:
            return self._engine
        await self._unload_locked()
        engine = await asyncio.to_thread(self._load, name)
        self._engine, self._name = engine, name
        self._described = _describe(engine)
        self._notify()
        return engine

    async def _unload_locked(self) -> Optional[str]:
        engine, name = self._engine, self._name
        if engine is None:
            return None
        self._engine, self._name, self._described = None, None, None
        for generation in list(self._active):
            if generation.engine is engine:
                generation.cancel()
        await asyncio.to_thread(engine.close)  # waits for the worker; queued requests end cancelled
        self.log.info("llamalab: unloaded %s", name)
        self._notify()
        return name

    async def load(self, model: Optional[str] = None) -> LoadedModel:
        """Load ``model`` now (switching if another is loaded) and describe it."""
        name = self.canonical(model)
        async with self._lock:
            engine = await self._ensure(name)
            if self.remote:
                return await asyncio.to_thread(_describe, engine)
            assert self._described is not None
            return self._described

    def served_name(self, name: str) -> str:
        """The name generations of ``name`` report (a remote server names its own model)."""
        return self._remote_names.get(name, name) if self.remote else (self._name or name)

    async def unload(self) -> Optional[str]:
        async with self._lock:
            return await self._unload_locked()

    # -- generating -------------------------------------------------------------------
    def params(self, sampling: Optional[SamplingParams] = None, **overrides: object) -> GenerationParams:
        """``GenerationParams`` from the wire's sampling fields, the server's defaults and limits."""
        values = {k: v for k, v in (sampling.model_dump() if sampling else {}).items() if v is not None}
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["stop"] = tuple(values.get("stop") or ())
        values["max_tokens"] = min(int(values.get("max_tokens") or self.config.default_max_tokens),
                                   self.config.max_tokens_limit)
        return GenerationParams(**values)  # type: ignore[arg-type]

    def _check_size(self, chars: int) -> None:
        if chars > self.config.max_prompt_chars:
            raise PromptTooLongError(f"the prompt has {chars} characters, over this server's limit of "
                                     f"{self.config.max_prompt_chars}; shorten it or start a new chat.")

    async def start(self, model: Optional[str], chars: int,
                    begin: Callable[[Engine], TokenStream]) -> Generation:
        """A generation that ``begin(engine)`` starts (on a worker thread) on the engine serving
        ``model``; ``chars`` is the prompt's size, checked against ``max_prompt_chars``."""
        self._check_size(chars)
        name = self.canonical(model)
        async with self._lock:
            engine = await self._ensure(name)
            if len(self._active) >= self.config.max_queued:
                raise BusyError(f"{len(self._active)} requests are already running or queued on the model "
                                "(the server's max_queued); wait for some to finish or cancel them.")
            stream = await _started(asyncio.to_thread(begin, engine))  # formats the prompt; then a slot
            generation = Generation(stream, engine, self.served_name(name), self._active.discard)
            self._active.add(generation)
            return generation

    async def chat(self, messages: Sequence[dict], params: GenerationParams,
                   model: Optional[str] = None) -> Generation:
        chars = len(messages[-1].get("content") or "") if messages else 0  # older turns get trimmed
        return await self.start(model, chars, lambda engine: engine.chat(messages, params))

    async def complete(self, prompt: str, params: GenerationParams, model: Optional[str] = None) -> Generation:
        return await self.start(model, len(prompt), lambda engine: engine.complete(prompt, params))

    async def tokenize(self, text: str, *, add_bos: bool, special: bool, model: Optional[str] = None) -> list[int]:
        self._check_size(len(text))
        name = self.canonical(model)
        async with self._lock:
            engine = await self._ensure(name)
            return await asyncio.to_thread(engine.tokenize, text, add_bos=add_bos, special=special)

    def cancel_all(self) -> None:
        for generation in list(self._active):
            generation.cancel()

    # -- settings and shutdown ----------------------------------------------------------
    async def update(self, **changes: object) -> bool:
        """Change ``ManagerConfig`` fields; unload the model if how it loads changed.
        Returns whether it was unloaded."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if "default_model" in changes:
            self.canonical(str(changes["default_model"]))  # refuse unknown or disallowed models
        reload = any(k in changes and changes[k] != getattr(self.config, k)
                     for k in ("default_model", "n_ctx", "n_gpu_layers", "n_parallel", "kv_size", "prompt_cache_mb"))
        reconnect = any(k in changes and changes[k] != getattr(self.config, k) for k in ("remote_url", "remote_api_key"))
        self.config = dataclasses.replace(self.config, **changes)  # type: ignore[arg-type]
        if reconnect:
            async with self._lock:
                engines, self._remote, self._remote_names = list(self._remote.values()), {}, {}
            for engine in engines:
                await asyncio.to_thread(engine.close)
        if reload and self._engine is not None:
            await self.unload()
            return True
        return False

    async def close(self) -> None:
        self._closed = True
        self.cancel_all()
        async with self._lock:
            await self._unload_locked()
            engines, self._remote, self._described = list(self._remote.values()), {}, None
        for engine in engines:
            await asyncio.to_thread(engine.close)


async def _started(starting: "asyncio.Future[TokenStream] | Awaitable[TokenStream]") -> TokenStream:
    """Await a stream being started on a thread; if the waiter is cancelled meanwhile, the
    stream is cancelled as soon as it exists, so no generation runs on with no reader."""
    future = asyncio.ensure_future(starting)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(lambda f: f.cancelled() or f.exception() or f.result().cancel())
        raise


def _describe(engine: Engine) -> LoadedModel:
    d = engine.describe()
    return LoadedModel(name=d.name, backend=d.backend, location=d.location, architecture=d.architecture,
                       quantization=d.quantization, context_length=d.context_length,
                       n_gpu_layers=d.n_gpu_layers, total_layers=d.total_layers,
                       chat_format=d.chat_format, notices=list(d.notices))

