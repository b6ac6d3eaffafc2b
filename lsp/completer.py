"""One suggestion at a time per document: debounce, supersede, time budget, stop rules, stats.

``Completer`` owns the engine (loaded on first use, reloaded when the model settings change)
and the state that spans requests for one document: the number of its newest request, its
running generation, the anchor line of its prefix window (``context.prefix_window``) and the
ids of that window's stable head (``context.LineCachedTokenizer``).
It knows nothing of pygls: the server hands it text, a cursor offset and the other open
documents, and gets text back.

A request waits ``debounceMs`` first; a newer request for the same document supersedes it:
the older one's generation is cancelled (``TokenStream.cancel`` takes effect within one
token) and it answers None. Generation streams on a helper thread (``AsyncTokenStream``), the
prompt is built on that thread too, and it ends as soon as the stop rules in
``llamalab.completion_rules`` say the suggestion is complete, or the time budget is spent.
The reply goes out at once; the generation's statistics (``prompt N tokens, reused M,
evaluated K``) are logged when the stream has wound down, through ``report``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from llamalab import (AsyncTokenStream, CursorContext, Engine, FimTokens, GenerationParams, GenerationResult,
                      LocalEngine, LocalOptions, open_engine, postprocess_completion, should_stop_completion,
                      strip_healed)

from .context import ContextDocument, LineCachedTokenizer, PromptPlan, context_chunks, plan_prompt, prefix_window
from .settings import ENGINE_FIELDS, Settings

__all__ = ["Completer", "CompletionStats", "format_stats"]

log = logging.getLogger("llamalab.lsp")

_CHARS_PER_TOKEN_REMOTE = 3  # a remote engine's prompt is cut by characters, not tokens


@dataclass(frozen=True)
class CompletionStats:
    uri: str
    result: Optional[GenerationResult]
    ended_by: str  # "stop rules", "time budget", "model", "superseded", "cancelled"
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


class Completer:
    def __init__(self, report: Callable[[CompletionStats], None]) -> None:
        self.settings = Settings()
        self.engine: Optional[Engine] = None
        self._report = report
        self._loading: Optional[asyncio.Future[Engine]] = None
        self._latest: dict[str, int] = {}  # uri -> number of its newest request
        self._streams: dict[str, AsyncTokenStream] = {}  # uri -> its running generation
        self._anchors: dict[str, int] = {}  # uri -> anchor line of its last prefix window
        self._tokenizers: dict[str, LineCachedTokenizer] = {}  # uri -> its prompt tokenizer
        self._context_cache: Optional[tuple[Any, tuple[str, tuple[str, ...]]]] = None
        self._counter = 0
        self._background: set[asyncio.Task[None]] = set()

    # -- settings and the model -----------------------------------------------------------
    def configure(self, settings: Settings) -> None:
        """Use ``settings`` from now on; the model is loaded again on next use if they change it."""
        old, self.settings = self.settings, settings
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
        self._anchors.pop(uri, None)
        self._tokenizers.pop(uri, None)
        self._latest.pop(uri, None)

    def cancel(self, uri: Optional[str] = None) -> None:
        """Stop the running generation of one document, or of all."""
        for key in [uri] if uri is not None else list(self._streams):
            stream = self._streams.pop(key, None) if key is not None else None
            if stream is not None:
                stream.cancel()

    # -- prompts ------------------------------------------------------------------------------
    def _with_context(self, others: Sequence[ContextDocument]) -> bool:
        s = self.settings
        return s.context_tokens > 0 and bool(others) and (
            s.context_tokens + s.prefix_tokens + s.suffix_tokens + s.max_tokens + 16 <= s.n_ctx)

    def plan(self, engine: LocalEngine, uri: str, ctx: CursorContext, others: Sequence[ContextDocument] = (),
             language_id: str = "", remember: bool = True) -> PromptPlan:
        """The prompt's ids for a local model (tokenizes: call it off the event loop). ``remember``
        keeps its anchor line for the document's next prompt."""
        s = self.settings
        tokenizer = self._tokenizers.get(uri)
        if tokenizer is None or tokenizer.tokenizer is not engine:  # one per document and model
            tokenizer = self._tokenizers[uri] = LineCachedTokenizer(engine)

        def count(part: str) -> int:
            return len(engine.tokenize(part)) if part else 0

        context, paths = self._context(others, language_id, count, engine) if self._with_context(others) else ("", ())
        plan = plan_prompt(tokenizer, FimTokens.from_info(engine.info), ctx.prefix + ctx.suffix, len(ctx.prefix),
                           prefix_tokens=s.prefix_tokens, suffix_tokens=s.suffix_tokens, context=context,
                           context_paths=paths, previous_anchor=self._anchors.get(uri))
        if remember:
            self._anchors[uri] = plan.anchor_line
        return plan

    def _context(self, others: Sequence[ContextDocument], language_id: str, count: Callable[[str], int],
                 engine: Engine) -> tuple[str, tuple[str, ...]]:
        """``context_chunks``, remembered until the other documents, the budget or the model change
        (a document's text is the same object between keystrokes elsewhere, and keeps its hash)."""
        key = (id(engine), language_id, self.settings.context_tokens,
               tuple((d.path, hash(d.text), len(d.text)) for d in others))
        cached = self._context_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        result = context_chunks(others, language_id, self.settings.context_tokens, count)
        self._context_cache = (key, result)
        return result

    def text_prompt(self, uri: str, ctx: CursorContext, others: Sequence[ContextDocument] = (),
                    language_id: str = "", remember: bool = True) -> str:
        """The prompt as text for a remote model, cut by an estimate of its tokens."""
        s = self.settings

        def estimate(part: str) -> int:
            return len(part) // _CHARS_PER_TOKEN_REMOTE

        context, _ = context_chunks(others, language_id, s.context_tokens, estimate) \
            if self._with_context(others) else ("", ())
        anchor, start_at = prefix_window(ctx.prefix, s.prefix_tokens, estimate, self._anchors.get(uri))
        if remember:
            self._anchors[uri] = anchor
        return context + ctx.prefix[start_at:][-_CHARS_PER_TOKEN_REMOTE * s.prefix_tokens:]

    def _start(self, engine: Engine, uri: str, ctx: CursorContext, others: Sequence[ContextDocument],
               language_id: str, params: GenerationParams) -> tuple[AsyncTokenStream, list[str]]:
        """The stream, and a box that holds the text the prompt left for the model to write
        (set on the helper thread before the first piece arrives)."""
        healed = [""]

        def start():  # on the stream's helper thread: tokenizing never blocks the event loop
            if isinstance(engine, LocalEngine):
                plan = self.plan(engine, uri, ctx, others, language_id)
                healed[0] = plan.healed
                return engine.complete_tokens(plan.tokens, dataclasses.replace(params, heal=plan.healed))
            return engine.complete(self.text_prompt(uri, ctx, others, language_id), params)

        return AsyncTokenStream(start), healed

    # -- one suggestion -----------------------------------------------------------------------
    async def suggest(self, uri: str, text: str, offset: int, language_id: str = "",
                      others: Sequence[ContextDocument] = ()) -> Optional[str]:
        """The suggestion for a cursor at ``offset`` in ``text``; None when superseded, cancelled
        or there is nothing to say."""
        started = time.perf_counter()
        self._counter += 1
        number = self._latest[uri] = self._counter
        self.cancel(uri)  # the superseded generation stops within a token
        s = self.settings
        ctx = CursorContext.at(text, min(max(0, offset), len(text)))
        if s.debounce_ms > 0:
            await asyncio.sleep(s.debounce_ms / 1000)
        if self._latest.get(uri) != number:
            return None
        engine = await self.get_engine()
        if self._latest.get(uri) != number:
            return None
        single = ctx.mode == "single" and bool(ctx.line_prefix.strip())
        params = GenerationParams(max_tokens=s.max_tokens, temperature=0.0, repeat_penalty=1.0,
                                  stop=("\n",) if single else (), priority="interactive")
        stream, healed = self._start(engine, uri, ctx, others, language_id, params)
        self._streams[uri] = stream
        generated, ended_by = "", "model"
        raw = ""
        try:
            async with asyncio.timeout(s.time_budget_ms / 1000 if s.time_budget_ms else None):
                async for piece in stream:
                    raw += piece
                    generated = strip_healed(raw, healed[0])
                    if should_stop_completion(generated, ctx):
                        ended_by = "stop rules"
                        break
        except TimeoutError:
            ended_by = "time budget"
            generated = _complete_lines(generated, ctx)
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
        return postprocess_completion(generated, ctx) or None

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


def _complete_lines(generated: str, ctx: CursorContext) -> str:
    """What a generation cut short by the time budget may still offer: single-line suggestions
    as they are, multi-line ones up to their last complete line."""
    if ctx.mode == "single" or "\n" not in generated.strip("\n"):
        return generated
    return generated[:generated.rstrip("\n").rfind("\n")]
