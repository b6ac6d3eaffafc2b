"""``EngineManager``: the one model a Jupyter server process serves, shared by every client.

The chat WebSocket, the OpenAI-compatible routes (and through them kernels' ``%llama``
magics and a local language server) all start their generations here, so the weights are
in memory once. The model is loaded lazily, on a worker thread, by the first request that
needs it (or at start with ``preload``).

Model names: inference requests name a model by its store name or a catalog reference
(``smollm2-135m-instruct:q4_1``, ``default``), never by a file path or URL (those go through
the pull and registration routes first); anything else is a plain ``ModelNotFoundError``
(404) that does not look at the filesystem. Only the server's own settings (``default_model``,
``/llamalab/models/load`` and ``PATCH /llamalab/settings``, for logged-in users) may name a path.

Switching: a request for another model than the loaded one never cancels anyone's generation.
It waits until the generations running on the loaded model have ended, then closes it and
loads the new one. While it waits it holds the manager's lock, so new requests (for either
model) queue behind it in arrival order and the switch cannot starve; they run once the new
model is in. A switch that still finds generations running after ``switch_wait_s`` gives up
with ``BusyError`` (cancelling nothing), which also frees the requests queued behind it. Only an explicit ``unload`` (``/llamalab/models/unload``, a settings change that
needs a reload) or shutdown cancels running generations (they end with
``finish_reason == "cancelled"``).

The lock is held only to choose (load, or switch to) the engine and register the request
with it; formatting and tokenizing the prompt run after, on a worker thread, outside the
lock, and the registration keeps the engine from being closed under them. The generation
itself runs on one of ``LocalEngine``'s slots (``n_parallel`` requests decoded together,
interactive completions first). ``max_queued`` bounds how many run or wait at once (more get
``BusyError``). Every text is size-checked against ``max_prompt_chars`` (each message and
their sum) before anything is tokenized (``PromptTooLongError``).

With ``remote_url`` set the manager loads nothing: it hands requests to a ``RemoteEngine``
per model name, and the server becomes a front for a shared inference server. ``remote_server()``
describes that server and its models (``remote_models.RemoteModels``: listed off the event loop,
with short timeouts, cached briefly); ``load(id)`` of an id it lists makes that model the one
requests without a model go to (``default_model()``), and refuses an id it does not list.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, TypeVar, Union

from llamalab import (CATALOG, AsyncTokenStream, ConfigError, Engine, GenerationParams, GenerationResult,
                      LocalOptions, ModelNotFoundError, ModelStore, RemoteEngine, SchedulerStats, TokenStream,
                      build_fim_prompt, default_model_name, open_engine, resolve)

from .errors import BusyError, ModelNotAllowedError, NoInfillError, PromptTooLongError
from .messages import LoadedModel, ModelChangedMessage, RemoteModelInfo, RemoteServerInfo, SamplingParams
from .remote_models import RemoteModels

__all__ = ["EngineManager", "Generation", "ManagerConfig"]

log = logging.getLogger(__name__)

Listener = Callable[[ModelChangedMessage], None]
T = TypeVar("T")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9._+-]{1,128}(:[A-Za-z0-9._+-]{1,32})?$")  # a store name or catalog reference

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
    switch_wait_s: float = 300.0  # how long a switch waits for the loaded model's generations


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
        self._remote_choice: Optional[str] = None  # the remote model chosen with load(id)
        self._remote_models = RemoteModels()
        self._active: set[Generation] = set()
        self._starting: dict[int, int] = {}  # id(engine) -> requests formatting their prompt on it
        self._ended = asyncio.Event()  # set whenever a generation or a start ends (a switch waits on it)
        self._listeners: list[Listener] = []
        self._closed = False

    # -- names ------------------------------------------------------------------------
    @property
    def remote(self) -> bool:
        return bool(self.config.remote_url)

    def default_model(self) -> str:
        """The reference a request without a model gets."""
        if self.remote and self._remote_choice:
            return self._remote_choice
        if self.config.default_model:
            return self.config.default_model
        if self.config.allowed_models:
            return self.config.allowed_models[0]
        return "" if self.remote else default_model_name()

    def canonical(self, model: Optional[str], *, paths: bool = False) -> str:
        """The store name ``model`` stands for; checks ``allowed_models``.

        A request names a store name or a catalog reference; a path, URL or Hub reference is an
        unknown model (``ModelNotFoundError``, the same answer whether such a file exists or not:
        the filesystem is not looked at). ``paths=True`` (the server's settings and the load
        route, for logged-in users) also accepts a GGUF path, as the configured default may be."""
        ref = (model or "").strip()
        trusted = paths or not ref or ref == self.config.default_model
        ref = ref or self.default_model()
        if self.remote:
            name = ref
        elif ref == self._name:
            return ref
        elif self.store.find(ref) is not None:
            name = ref
        elif not trusted:
            name = self._catalog_name(ref)
        elif Path(ref).expanduser().is_file():
            name = str(Path(ref).expanduser().resolve())
        else:
            name = resolve(ref).store_name  # ModelNotFoundError names the known models
        allowed = self.config.allowed_models
        if allowed and ref not in allowed and name not in allowed:
            raise ModelNotAllowedError(f"'{ref}' is not one of the models this server offers "
                                       f"({', '.join(allowed)}); ask its administrator to allow it.")
        return name

    def _catalog_name(self, ref: str) -> str:
        """The store name of catalog reference ``ref``; never touches the filesystem."""
        if _MODEL_NAME.match(ref) and not ref.lower().endswith(".gguf") and not ref.lower().startswith("hf:"):
            try:
                return resolve(ref).store_name  # a name-shaped ref only reaches the catalog
            except ModelNotFoundError as exc:
                if ":" in ref and "quantization" in str(exc):
                    raise
        stored = [m.name for m in self.store.list() if self.is_allowed(m.name)][:8]
        shown = ref if len(ref) <= 60 else ref[:57] + "..."
        raise ModelNotFoundError(
            f"unknown model '{shown}'; name a model in this server's store ({', '.join(stored) or 'none yet'}) or "
            f"the catalog ({', '.join(e.name for e in CATALOG)}); a file or URL must be pulled into the store "
            "first (POST /llamalab/pulls, or `llamalab models pull`).")

    def is_allowed(self, name: str) -> bool:
        return not self.config.allowed_models or name in self.config.allowed_models

    # -- state --------------------------------------------------------------------------
    @property
    def loaded(self) -> Optional[LoadedModel]:
        return self._described

    def engine_stats(self) -> Optional[SchedulerStats]:
        """The loaded model's scheduler snapshot (slots, queue, KV cells, prompt cache), if loaded."""
        engine = self._engine
        return engine.stats() if engine is not None else None

    @property
    def active_count(self) -> int:
        return len(self._active) + sum(self._starting.values())

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
        stored = self.store.find(name)  # a store name opens its own file, never a same-named one nearby
        model = str(self.store.get(name).file) if stored is not None else name
        return open_engine(model, options=options, name=name, store=self.store, on_notice=self.log.info)

    async def _ensure(self, name: str) -> Engine:
        """The engine for ``name``, loading or switching to it (the lock is held). A switch
        first waits for the generations on the loaded model to end."""
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
        if self._engine is not None:
            self.log.info("llamalab: %s asked for; waiting for %d generations on %s to end", name,
                          self._in_use(self._engine), self._name)
            await self._drained(self._engine, name)
            if self._closed:
                raise BusyError("the Jupyter server is shutting down; try again once it restarts.")
        await self._unload_locked()
        engine = await asyncio.to_thread(self._load, name)
        self._engine, self._name = engine, name
        self._described = _describe(engine)
        self._notify()
        return engine

    def _in_use(self, engine: Engine) -> int:
        """Generations running on ``engine`` plus requests still starting on it."""
        return self._starting.get(id(engine), 0) + sum(1 for g in self._active if g.engine is engine)

    async def _drained(self, engine: Engine, wanted: str) -> None:
        """Return once nothing runs or starts on ``engine`` (the lock is held: nothing new starts),
        or raise ``BusyError`` after ``switch_wait_s`` (nothing is cancelled either way)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.switch_wait_s
        while self._in_use(engine):
            self._ended.clear()
            left = deadline - loop.time()
            if left <= 0:
                raise BusyError(f"{self._in_use(engine)} generations are still running on {self._name}; loading "
                                f"{wanted} waited {self.config.switch_wait_s:g} s for them to end. Try again later, "
                                "or ask on the loaded model.")
            try:
                await asyncio.wait_for(self._ended.wait(), left)
            except asyncio.TimeoutError:
                pass

    def _release(self, engine: Engine) -> None:
        """A request that was starting on ``engine`` has its generation, or failed."""
        left = self._starting.get(id(engine), 0) - 1
        if left > 0:
            self._starting[id(engine)] = left
        else:
            self._starting.pop(id(engine), None)
        self._ended.set()

    def _finished(self, generation: "Generation") -> None:
        self._active.discard(generation)
        self._ended.set()

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
        """Load ``model`` now (a store name, catalog reference or path; switching, once the
        loaded model's generations end, if another is loaded) and describe it. Remote, ``model``
        must be an id the server lists; it becomes the one requests without a model go to."""
        name = self.canonical(model, paths=True)
        chosen = self.remote and bool((model or "").strip())
        if chosen:
            await self._remote_models.check_listed(self.config.remote_url or "", self.config.remote_api_key, name)
        async with self._lock:
            engine = await self._ensure(name)
            if self.remote:
                described = await asyncio.to_thread(_describe, engine)
                if chosen:
                    self._remote_choice, self._described = name, described
                    self._notify()
                return described
            assert self._described is not None
            return self._described

    def served_name(self, name: str) -> str:
        """The name generations of ``name`` report (a remote server names its own model)."""
        return self._remote_names.get(name, name) if self.remote else (self._name or name)

    async def unload(self) -> Optional[str]:
        """Unload the model now: generations still running on it end ``cancelled``."""
        async with self._lock:
            return await self._unload_locked()

    # -- the remote server's models ----------------------------------------------------
    async def remote_server(self) -> Optional[RemoteServerInfo]:
        """The remote server, its models and the one in use (None without ``remote_url``)."""
        if not self.remote:
            return None
        listing = await self._remote_models.listing(self.config.remote_url or "", self.config.remote_api_key)
        wanted = self.default_model()
        in_use = next((n for n in (wanted, self._remote_names.get(wanted)) if n in listing.ids),
                      listing.ids[0] if listing.ids else None)  # a nameless request gets the server's first
        return RemoteServerInfo(url=RemoteEngine.redact_url(self.config.remote_url or ""), kind=listing.kind,
                                error=listing.error, models=[RemoteModelInfo(id=i, in_use=i == in_use,
                                                                             allowed=self.is_allowed(i))
                                                             for i in listing.ids])

    # -- generating -------------------------------------------------------------------
    def params(self, sampling: Optional[SamplingParams] = None, **overrides: object) -> GenerationParams:
        """``GenerationParams`` from the wire's sampling fields, the server's defaults and limits."""
        values = {k: v for k, v in (sampling.model_dump() if sampling else {}).items() if v is not None}
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["stop"] = tuple(values.get("stop") or ())
        values["max_tokens"] = min(int(values.get("max_tokens") or self.config.default_max_tokens),
                                   self.config.max_tokens_limit)
        return GenerationParams(**values)  # type: ignore[arg-type]

    def check_prompt(self, fields: Iterable[tuple[str, int]]) -> None:
        """Refuse (``PromptTooLongError``) a prompt with one text field, or all of them together,
        over ``max_prompt_chars``; ``fields`` are (what it is, its length). Cheap: call it
        before anything is tokenized."""
        limit, total = self.config.max_prompt_chars, 0
        for what, chars in fields:
            if chars > limit:
                raise PromptTooLongError(f"{what} has {chars} characters, over this server's limit of {limit} "
                                         "(max_prompt_chars); shorten it.")
            total += chars
        if total > limit:
            raise PromptTooLongError(f"the prompt has {total} characters in all (system prompt, earlier messages "
                                     f"and message), over this server's limit of {limit} (max_prompt_chars); "
                                     "send fewer or shorter messages, or start a new chat.")

    def _check_size(self, chars: int) -> None:
        self.check_prompt([("the prompt", chars)])

    async def start(self, model: Optional[str], chars: int,
                    begin: Callable[[Engine], TokenStream]) -> Generation:
        """A generation that ``begin(engine)`` starts (on a worker thread) on the engine serving
        ``model``; ``chars`` is the prompt's size, checked against ``max_prompt_chars``.

        The lock is held only to choose the engine and register the request on it; ``begin``
        (which formats and tokenizes the prompt) runs after, outside it."""
        self._check_size(chars)
        name = self.canonical(model)
        async with self._lock:
            engine = await self._ensure(name)
            if self.active_count >= self.config.max_queued:
                raise BusyError(f"{self.active_count} requests are already running or queued on the model "
                                "(the server's max_queued); wait for some to finish or cancel them.")
            self._starting[id(engine)] = self._starting.get(id(engine), 0) + 1  # a switch now waits for it
        stream = await self._started(engine, begin)
        generation = Generation(stream, engine, self.served_name(name), self._finished)
        self._active.add(generation)
        self._release(engine)
        return generation

    async def _started(self, engine: Engine, begin: Callable[[Engine], TokenStream]) -> TokenStream:
        """``begin(engine)`` for a request registered in ``_starting``; if the waiter is cancelled
        meanwhile, the stream is cancelled as soon as it exists."""
        return await self._off_lock(engine, begin, abandon=lambda stream: stream.cancel())

    async def _off_lock(self, engine: Engine, work: Callable[[Engine], T],
                        abandon: Callable[[T], object] = lambda _: None) -> T:
        """Run ``work(engine)`` on a thread for a request registered in ``_starting``. A failure
        releases the registration; a cancelled waiter releases it only once the thread is done
        (so the engine is not closed under it), and ``abandon`` gets what it made."""
        future = asyncio.ensure_future(asyncio.to_thread(work, engine))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            def later(f: "asyncio.Future[T]") -> None:
                if not f.cancelled() and f.exception() is None:
                    abandon(f.result())
                self._release(engine)

            future.add_done_callback(later)
            raise
        except BaseException:
            self._release(engine)
            raise

    async def chat(self, messages: Sequence[dict], params: GenerationParams,
                   model: Optional[str] = None) -> Generation:
        """A chat generation; every message, and all of them together, are size-checked first."""
        self.check_prompt((f"message {i + 1} ({m.get('role')})", len(m.get("content") or ""))
                          for i, m in enumerate(messages))
        return await self.start(model, 0, lambda engine: engine.chat(messages, params))

    async def complete(self, prompt: str, params: GenerationParams, model: Optional[str] = None) -> Generation:
        return await self.start(model, len(prompt), lambda engine: engine.complete(prompt, params))

    async def complete_tokens(self, tokens: Sequence[int], params: GenerationParams,
                              model: Optional[str] = None) -> Generation:
        """A completion of a prompt given as token ids (sent as they are)."""
        return await self.start(model, len(tokens), lambda engine: _token_prompts(engine).complete_tokens(tokens, params))

    async def infill(self, prefix: Union[str, Sequence[int]], suffix: Union[str, Sequence[int]],
                     params: GenerationParams, model: Optional[str] = None) -> tuple[Generation, str]:
        """Fill in the middle between ``prefix`` and ``suffix`` (text, or token ids as llama-server
        takes them) with the model's FIM tokens (``NoInfillError`` for a model without them).
        Returns the generation and the text it begins with that is the prefix's own (token
        healing, text prefixes only: leave it out of the answer)."""
        healed: list[str] = []

        def begin(engine: Engine) -> TokenStream:
            fim = _token_prompts(engine).fim_tokens()
            if not fim.supported:
                raise NoInfillError(f"{self.served_name(self.canonical(model))} has no fill-in-the-middle tokens; "
                                    "/infill needs a code model such as Code Llama (or send the prefix to "
                                    "/v1/completions).")
            if isinstance(prefix, str) and isinstance(suffix, str):
                window = engine.context_size or 4096  # half for the prefix, a quarter for the suffix
                built = build_fim_prompt(engine, prefix, suffix, fim, max_prefix_tokens=window // 2,
                                         max_suffix_tokens=window // 4)
                tokens, heal = built.tokens, built.healed
            else:
                ids = [(engine.tokenize(part) if isinstance(part, str) else list(part)) for part in (prefix, suffix)]
                head = [fim.bos] if fim.bos is not None else []
                tokens, heal = head + [fim.pre, *ids[0], fim.suf, *ids[1], fim.mid], ""  # type: ignore[list-item]
            healed.append(heal)
            return engine.complete_tokens(tokens, dataclasses.replace(params, heal=heal))

        generation = await self.start(model, len(prefix) + len(suffix), begin)
        return generation, healed[0]

    async def tokenize(self, text: str, *, add_bos: bool, special: bool, model: Optional[str] = None) -> list[int]:
        self._check_size(len(text))
        return await self._with_engine(model, lambda e: e.tokenize(text, add_bos=add_bos, special=special))

    async def detokenize(self, tokens: Sequence[int], model: Optional[str] = None) -> str:
        self._check_size(len(tokens))
        return await self._with_engine(model, lambda e: e.detokenize(tokens))

    async def _with_engine(self, model: Optional[str], work: Callable[[Engine], T]) -> T:
        """``work(engine)`` on a worker thread, outside the lock, the engine kept open meanwhile."""
        name = self.canonical(model)
        async with self._lock:
            engine = await self._ensure(name)
            self._starting[id(engine)] = self._starting.get(id(engine), 0) + 1  # keeps it open, off the lock
        result = await self._off_lock(engine, work)
        self._release(engine)
        return result

    def cancel_all(self) -> None:
        for generation in list(self._active):
            generation.cancel()

    # -- settings and shutdown ----------------------------------------------------------
    async def update(self, **changes: object) -> bool:
        """Change ``ManagerConfig`` fields; unload the model if how it loads changed.
        Returns whether it was unloaded."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if "default_model" in changes:
            self.canonical(str(changes["default_model"]), paths=True)  # refuse unknown or disallowed models
        reload = any(k in changes and changes[k] != getattr(self.config, k)
                     for k in ("default_model", "n_ctx", "n_gpu_layers", "n_parallel", "kv_size", "prompt_cache_mb"))
        reconnect = any(k in changes and changes[k] != getattr(self.config, k) for k in ("remote_url", "remote_api_key"))
        if reconnect or ("default_model" in changes and changes["default_model"] != self.config.default_model):
            self._remote_choice = None  # the newly configured default (or server) decides
        self.config = dataclasses.replace(self.config, **changes)  # type: ignore[arg-type]
        if reconnect:
            async with self._lock:
                engines, self._remote, self._remote_names = list(self._remote.values()), {}, {}
            await self._remote_models.close()
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
        await self._remote_models.close()
        for engine in engines:
            await asyncio.to_thread(engine.close)


def _token_prompts(engine: Engine) -> Engine:
    """``engine``, if it takes prompts as token ids; else ``ConfigError``."""
    if not engine.accepts_token_prompts:
        raise ConfigError("this server's model takes text prompts only (a remote server without token "
                          "prompts); send the prompt as text.")
    return engine


def _describe(engine: Engine) -> LoadedModel:
    d = engine.describe()
    return LoadedModel(name=d.name, backend=d.backend, location=d.location, architecture=d.architecture,
                       quantization=d.quantization, context_length=d.context_length,
                       n_gpu_layers=d.n_gpu_layers, total_layers=d.total_layers,
                       chat_format=d.chat_format, notices=list(d.notices))

