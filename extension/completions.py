"""Inline code completion for JupyterLab's inline completer: ``POST /llamalab/complete``.

An HTTP adapter over the core's ``SuggestionService``, the same one the language server uses:
the request's text (a notebook's cells around the cursor's, or a document's text above and
below the cursor), the kernel's names, the shared model; the service lays the prompt out so it
keeps its start while the user types (the model's cache then evaluates only the new tokens),
heals the cursor's boundary, stops as soon as the suggestion is complete and cleans it up. A
request whose text extends the last suggestion for the same document by what it predicted is
answered from it without the model (type-ahead). ``warm: true`` only reads the prompt into the
model's cache (the front end sends one when the user enters a cell).

    POST /llamalab/complete   CompletionRequest -> CompletionReply
                              stream=true: server-sent CompletionChunk events (the whole
                              suggestion so far), then one CompletionReply event

Per-document state is keyed by the document's ``path``; a request without a path keeps none. A client that closes the connection (a superseded request, a keystroke)
cancels the generation within a token, so the model is free for the next one. Errors before
the first event are ordinary JSON ``ErrorMessage`` replies with their HTTP status; an error
after a stream started is sent as an ``ErrorMessage`` event that ends the stream.
"""

from __future__ import annotations

import time
from typing import Hashable, Optional

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.iostream import StreamClosedError

from llamalab import (Engine, GenerationResult, LlamalabError, NotebookCell, SuggestionPlan, SuggestionService,
                      SuggestionText, SuggestRequest, TokenStream, collect_suggestion)

from .errors import error_message
from .handlers import BadRequest, LlamalabHandler
from .kernel_context import reader_for
from .manager import Generation
from .messages import CompletionChunk, CompletionReply, CompletionRequest, Usage

__all__ = ["CompleteHandler", "DEFAULT_MAX_TOKENS", "suggest_request", "handlers"]

DEFAULT_MAX_TOKENS = 64


def suggest_request(request: CompletionRequest, document: Hashable, max_tokens: int,
                    kernel_names: str = "") -> SuggestRequest:
    """The service's request for a wire request."""
    cells = None
    if request.cells is not None:
        cells = tuple(NotebookCell(id=c.id, source=c.source, kind=c.kind) for c in request.cells)
    mode = None if request.mode == "auto" else request.mode
    return SuggestRequest(document=document, prefix=request.prefix, suffix=request.suffix,
                          language=request.language or "", cells=cells, cell_index=request.cell_index or 0,
                          mode=mode, kernel_names=kernel_names, max_tokens=max_tokens, warm=request.warm)


class _Prompted:
    """Starts the suggestion on the engine the manager picked and keeps its plan."""

    def __init__(self, service: SuggestionService, request: SuggestRequest) -> None:
        self.service = service
        self.request = request
        self.plan: Optional[SuggestionPlan] = None
        self.engine: Optional[Engine] = None

    def __call__(self, engine: Engine) -> TokenStream:
        stream, self.plan = self.service.start(engine, self.request)
        self.engine = engine
        return stream

    def prompt_text(self) -> Optional[str]:
        if self.plan is None or self.engine is None:
            return None
        if self.plan.tokens is not None:
            return self.engine.detokenize(self.plan.tokens)
        return self.plan.text


class CompleteHandler(LlamalabHandler):
    _gone = False
    _generation: Optional[Generation] = None

    def on_connection_close(self) -> None:
        self._gone = True
        if self._generation is not None:
            self._generation.cancel()  # superseded or abandoned: free the model within a token

    @property
    def service(self) -> SuggestionService:
        return self.settings["llamalab_suggestions"]

    @staticmethod
    def _document(request: CompletionRequest) -> Hashable:
        """The key of the document's state: its path (one Jupyter server serves one user, or
        collaborators on the same documents); none without a path."""
        return ("path", request.path) if request.path else ""

    async def _kernel_names(self, request: CompletionRequest, near: str) -> str:
        if request.kernel is None:
            return ""
        reader = reader_for(self.settings, self.kernel_manager, self.log)
        return await reader.block(request.kernel.id, request.kernel.execution_count, near=near)

    @web.authenticated
    @authorized
    async def post(self) -> None:
        wire = self.body_as(CompletionRequest)
        model = self.manager.canonical(wire.model)  # store names and catalog references only: 404 before any work
        limit = self.manager.config.max_tokens_limit
        max_tokens = min(wire.max_tokens or DEFAULT_MAX_TOKENS, limit)
        near = "".join(c.source for c in (wire.cells or [])[:wire.cell_index or 0][-8:]) + wire.prefix[-2000:]
        kernel_names = await self._kernel_names(wire, near)
        request = suggest_request(wire, self._document(wire), max_tokens, kernel_names)
        started = time.monotonic()
        predicted = self.service.predicted(request)
        if predicted is not None:
            self.service.remember(request, predicted)
            reply = CompletionReply(text=predicted, fim=False, model=self.manager.served_name(model), finish_reason="stop",
                usage=Usage(prompt_tokens=0, completion_tokens=0))
            await self._answer(wire, reply)
            return
        prompted = _Prompted(self.service, request)
        options = self.service.options
        generation = await self.manager.start(wire.model, min(len(wire.prefix) + len(wire.suffix),
                                                              self.service.prompt_chars()), prompted)
        self._generation = generation
        if self._gone:
            generation.cancel()
        try:
            text = SuggestionText(request.cursor, prompted.plan.healed if prompted.plan else "")
            budget = None if wire.stream or request.warm else options.time_budget_s  # a warm-up fills the cache whole
            on_text = self._chunk if wire.stream else None
            if wire.stream:
                self._start_events()
            try:
                suggestion, ended_by = await collect_suggestion(generation, text, budget, on_text)
                if ended_by != "model":
                    await _stop(generation)
                reply = self._reply(generation, prompted, suggestion, ended_by)
                if not request.warm:
                    self.service.remember(request, reply.text)
                if wire.explain:
                    reply.prompt = prompted.prompt_text()
            except (BadRequest, LlamalabError) as exc:
                if not wire.stream:
                    raise
                error = exc.error if isinstance(exc, BadRequest) else error_message(exc, log=self.log)
                await self._event(error.model_dump_json())
                self.finish(set_content_type="text/event-stream")
                return
            await self._answer(wire, reply)
        except StreamClosedError:
            generation.cancel()
        finally:
            await generation.aclose()
            self.log.debug("llamalab: completion (%s, warm=%s) in %.3f s", request.cursor.mode, request.warm,
                           time.monotonic() - started)

    def _start_events(self) -> None:
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")

    async def _chunk(self, text: str) -> None:
        await self._event(CompletionChunk(text=text).model_dump_json())

    async def _answer(self, wire: CompletionRequest, reply: CompletionReply) -> None:
        if self._gone:
            return
        if wire.stream:
            self._start_events()
            await self._event(reply.model_dump_json())
            self.finish(set_content_type="text/event-stream")
        else:
            self.reply(reply)

    async def _event(self, data: str) -> None:
        if self._gone:
            raise StreamClosedError()
        self.write(f"data: {data}\n\n")
        await self.flush()

    def _reply(self, generation: Generation, prompted: _Prompted, suggestion: str, ended_by: str) -> CompletionReply:
        result: Optional[GenerationResult] = generation.result
        stopped = ended_by in ("stop rules", "time budget")
        if stopped:
            reason = "stop"
        elif result is None:
            reason = "cancelled"
        else:
            reason = result.finish_reason
        text = "" if prompted.request.warm or (reason == "cancelled" and not suggestion) else suggestion
        usage = Usage(prompt_tokens=result.prompt_tokens if result else 0,
                      completion_tokens=result.completion_tokens if result else 0,
                      time_to_first_token_s=result.time_to_first_token_s if result else None,
                      duration_s=result.duration_s if result else 0.0,
                      reused_prompt_tokens=result.reused_prompt_tokens if result else None)
        return CompletionReply(text=text, fim=bool(prompted.plan and prompted.plan.infill), model=generation.model,
                               finish_reason=reason, usage=usage)


async def _stop(generation: Generation) -> None:
    """Cancel a generation whose suggestion is complete and let it end (within a token), so its
    result, and the token counts in it, are there."""
    generation.cancel()
    async for _ in generation:
        pass


def handlers() -> list[tuple[str, type]]:
    return [(r"/llamalab/complete", CompleteHandler)]

