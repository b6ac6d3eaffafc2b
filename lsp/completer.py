"""One suggestion at a time per document: debounce, supersede, statistics.

``Completer`` owns the engine (loaded on first use, reloaded when the model settings change)
and, per document, the number of its newest request and its running generation. What a
suggestion is made of (the prompt's layout, healing, stop rules, time budget, type-ahead)
is the core's ``SuggestionService``; the completer hands it the document's text, the cursor
and the other open documents, and gets text back. It knows nothing of pygls.

A request waits ``debounceMs`` first; a newer request for the same document supersedes it:
the older one's generation is cancelled (``TokenStream.cancel`` takes effect within one
token) and it answers None. A request whose text extends the document's last suggestion by
what that suggestion predicted is answered from it at once (type-ahead). Generation streams
on a helper thread (``AsyncTokenStream``), the prompt is built on that thread too. The reply
goes out at once; the generation's statistics (``prompt N tokens, reused M, evaluated K``)
are logged when the stream has wound down, through ``report``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from llamalab import AsyncTokenStream, Engine, GenerationResult, LocalOptions, open_engine
from llamalab.suggest import (ContextDocument, SuggestionPlan, SuggestionService, SuggestionText, SuggestOptions,
                              SuggestRequest, collect)

from .settings import ENGINE_FIELDS, Settings

__all__ = ["Completer", "CompletionStats", "format_stats"]

log = logging.getLogger("llamalab.lsp")

@dataclass(frozen=True)
class CompletionStats:
    uri: str
    result: Optional[GenerationResult]
    ended_by: str  # "stop rules", "time budget", "model", "superseded", "cancelled", "type-ahead"
    latency_s: float

    @property
    def message(self) -> str:
        return format_stats(self)


def format_stats(stats: CompletionStats) -> str:
    r = stats.result
    if r is None:
        return f"{stats.uri}: no generation ({stats.ended_by})"
    reused = "?" if r.reused_prompt_tokens is None else str(r.reused_prompt_tokens)
    evaluated = "?" if r.evaluated_prompt_tokens is None else str(r.evaluated_prompt_tokens)
    return (f"prompt {r.prompt_tokens} tokens, reused {reused}, evaluated {evaluated}; generated "
            f"{r.completion_tokens} tokens, ended by {stats.ended_by}, {1000 * stats.latency_s:.0f} ms ({stats.uri})")


def suggest_options(settings: Settings) -> SuggestOptions:
    return SuggestOptions(prefix_tokens=settings.prefix_tokens, suffix_tokens=settings.suffix_tokens,
                          context_tokens=settings.context_tokens, max_tokens=settings.max_tokens,
                          time_budget_s=settings.time_budget_ms / 1000 if settings.time_budget_ms else None)


class Completer:
    def __init__(self, report: Callable[[CompletionStats], None]) -> None:
        self.settings = Settings()
        self.service = SuggestionService(suggest_options(self.settings))
        self.engine: Optional[Engine] = None
        self._report = report
        self._loading: Optional[asyncio.Future[Engine]] = None
        self._latest: dict[str, int] = {}  # uri -> number of its newest request
        self._streams: dict[str, AsyncTokenStream] = {}  # uri -> its running generation
        self._counter = 0
        self._background: set[asyncio.Task[None]] = set()

    # -- settings and the model -----------------------------------------------------------
    def configure(self, settings: Settings) -> None:
        """Use ``settings`` from now on; the model is loaded again on next use if they change it."""
        old, self.settings = self.settings, settings
        self.service.options = suggest_options(settings)
        if not set(old.changed(settings)) & set(ENGINE_FIELDS):
            return
        self._loading = None  # a load under way is closed when it finishes
        if self.engine is not None:
            engine, self.engine = self.engine, None
            engine.cancel()
            threading.Thread(target=engine.close, name="llamalab-lsp-close", daemon=True).start()

    def _load_engine(self, s: Settings) -> Engine:
        if s.remote_url:
            return open_engine(s.remote_model, remote_url=s.remote_url)
        log.info("loading %s", s.model or "the default model")
        return open_engine(s.model, options=LocalOptions(n_ctx=s.n_ctx, n_parallel=s.n_parallel), on_notice=log.info)

    async def get_engine(self) -> Engine:
        """The engine, loaded on first use. The load is shielded: a request cancelled while
        the model loads does not abandon the half-loaded model; the next request gets it."""
        if self.engine is not None:
            return self.engine
        if self._loading is None:
            loading = self._loading = asyncio.ensure_future(asyncio.to_thread(self._load_engine, self.settings))
            loading.add_done_callback(self._loaded)
        return await asyncio.shield(self._loading)

    def _loaded(self, loading: "asyncio.Future[Engine]") -> None:
        if loading.cancelled() or loading.exception() is not None:
            if self._loading is loading:
                self._loading = None  # the next request tries again (and reports the error again)
            return
        if self._loading is loading:
            self._loading, self.engine = None, loading.result()
        else:  # the settings changed while it loaded
            threading.Thread(target=loading.result().close, name="llamalab-lsp-close", daemon=True).start()

    def forget(self, uri: str) -> None:
        """A document was closed."""
        self.cancel(uri)
        self.service.forget(uri)
        self._latest.pop(uri, None)

    def cancel(self, uri: Optional[str] = None) -> None:
        """Stop the running generation of one document, or of all."""
        for key in [uri] if uri is not None else list(self._streams):
            stream = self._streams.pop(key, None) if key is not None else None
            if stream is not None:
                stream.cancel()

    # -- prompts ------------------------------------------------------------------------------
    def request(self, uri: str, text: str, offset: int, language_id: str = "",
                others: Sequence[ContextDocument] = ()) -> SuggestRequest:
        offset = min(max(0, offset), len(text))
        return SuggestRequest(document=uri, prefix=text[:offset], suffix=text[offset:], language=language_id,
                              others=tuple(others) if self.settings.context_tokens else ())

    def plan(self, engine: Engine, request: SuggestRequest, remember: bool = True) -> SuggestionPlan:
        """The prompt (tokenizes: call it off the event loop)."""
        return self.service.plan(engine, request, remember=remember)

    # -- one suggestion -----------------------------------------------------------------------
    async def suggest(self, uri: str, text: str, offset: int, language_id: str = "",
                      others: Sequence[ContextDocument] = ()) -> Optional[str]:
        """The suggestion for a cursor at ``offset`` in ``text``; None when superseded, cancelled
        or there is nothing to say."""
        started = time.perf_counter()
        self._counter += 1
        number = self._latest[uri] = self._counter
        self.cancel(uri)  # the superseded generation stops within a token
        request = self.request(uri, text, offset, language_id, others)
        predicted = self.service.predicted(request)
        if predicted is not None:  # the user typed what the last suggestion said: the rest of it
            self.service.remember(request, predicted)
            self._report(CompletionStats(uri, None, "type-ahead", time.perf_counter() - started))
            return predicted
        s = self.settings
        if s.debounce_ms > 0:
            await asyncio.sleep(s.debounce_ms / 1000)
        if self._latest.get(uri) != number:
            return None
        engine = await self.get_engine()
        if self._latest.get(uri) != number:
            return None
        healed = [""]

        def start():  # on the stream's helper thread: tokenizing never blocks the event loop
            stream, plan = self.service.start(engine, request)
            healed[0] = plan.healed
            return stream

        stream = AsyncTokenStream(start)
        self._streams[uri] = stream
        suggestion = SuggestionText(request.cursor)
        async def pieces():
            async for piece in stream:
                suggestion.healed = healed[0]  # set on the helper thread before the first piece
                yield piece

        try:
            text_out, ended_by = await collect(pieces(), suggestion, self.service.options.time_budget_s)
        except asyncio.CancelledError:  # $/cancelRequest: pygls answers RequestCancelled
            self._after(uri, stream, "cancelled", started)
            raise
        finally:
            if self._streams.get(uri) is stream:
                del self._streams[uri]
        if self._latest.get(uri) != number:
            self._after(uri, stream, "superseded", started)
            return None
        self._after(uri, stream, ended_by, started)
        self.service.remember(request, text_out)
        return text_out or None

    def _after(self, uri: str, stream: AsyncTokenStream, ended_by: str, started: float) -> None:
        """Report the generation's statistics once its stream has ended (within a token)."""
        latency = time.perf_counter() - started
        stream.cancel()  # a no-op when it has ended already

        async def report() -> None:
            try:
                async for _ in stream:
                    pass
            except Exception as exc:  # the error was (or will be) the request's own answer
                log.debug("generation ended with %s", exc)
            self._report(CompletionStats(uri, stream.result, ended_by, latency))

        task = asyncio.get_running_loop().create_task(report())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
