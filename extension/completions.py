"""Inline code completion for JupyterLab's inline completer: ``POST /llamalab/complete``.

The request carries the text before the cursor (``prefix``) and after it (``suffix``). On a
local model with fill-in-the-middle tokens (Code Llama) the prompt is built from token ids
with ``build_fim_prompt``; other local models get the prefix alone (``build_fim_prompt``
falls back to it), and a remote backend a plain prefix completion through its completion API.
The shared stop rules of ``llamalab.completion_rules`` end the generation as soon as the
suggestion is complete (one line in the middle of a line, the current block on a blank one)
and clean the text the same way the language server does.

    POST /llamalab/complete   CompletionRequest -> CompletionReply
                              stream=true: server-sent CompletionChunk events (the whole
                              suggestion so far), then one CompletionReply event

A client that closes the connection (a superseded request, a keystroke) cancels the
generation within a token, so the model is free for the next one. Errors before the first
event are ordinary JSON ``ErrorMessage`` replies with their HTTP status; an error after a
stream started is sent as an ``ErrorMessage`` event that ends the stream.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Optional

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.iostream import StreamClosedError

from llamalab import (CursorContext, Engine, FimTokens, GenerationParams, GenerationResult, LlamalabError,
                      LocalEngine, TokenStream, build_fim_prompt, postprocess_completion, should_stop_completion,
                      strip_healed)

from .errors import error_message
from .handlers import BadRequest, LlamalabHandler
from .manager import Generation
from .messages import CompletionChunk, CompletionReply, CompletionRequest, Usage

__all__ = ["CompleteHandler", "DEFAULT_MAX_TOKENS", "cursor_context", "completion_params", "handlers"]

DEFAULT_MAX_TOKENS = 64
MAX_PREFIX_TOKENS = 1024
MAX_SUFFIX_TOKENS = 256
REMOTE_PREFIX_CHARS = 4 * MAX_PREFIX_TOKENS  # about 4 characters a token for code


def cursor_context(request: CompletionRequest) -> CursorContext:
    mode = None if request.mode == "auto" else request.mode
    return CursorContext.at(request.prefix + request.suffix, len(request.prefix), mode=mode)


def completion_params(ctx: CursorContext, max_tokens: int) -> dict[str, object]:
    """Greedy sampling (a suggestion should not change between two identical requests); a
    single-line completion in the middle of a line stops at the newline in llama.cpp itself."""
    stop = ("\n",) if ctx.mode == "single" and ctx.line_prefix.strip() else ()
    return {"max_tokens": max_tokens, "temperature": 0.0, "stop": stop, "priority": "interactive"}


class _Prompted:
    """Starts the generation on the engine the manager picked and remembers whether FIM was used."""

    def __init__(self, ctx: CursorContext, params: GenerationParams) -> None:
        self.ctx = ctx
        self.params = params
        self.fim = False
        self.healed = ""  # the prefix's end left for the model to write (``llamalab.healing``)

    def __call__(self, engine: Engine) -> TokenStream:
        if isinstance(engine, LocalEngine):
            room = max(64, engine.n_ctx - self.params.max_tokens - 8)
            prompt = build_fim_prompt(engine, self.ctx.prefix, self.ctx.suffix, FimTokens.from_info(engine.info),
                                      max_prefix_tokens=min(MAX_PREFIX_TOKENS, room * 3 // 4),
                                      max_suffix_tokens=min(MAX_SUFFIX_TOKENS, room // 4))
            self.fim, self.healed = prompt.infill, prompt.healed
            return engine.complete_tokens(prompt.tokens, dataclasses.replace(self.params, heal=prompt.healed))
        return engine.complete(self.ctx.prefix[-REMOTE_PREFIX_CHARS:], self.params)


class CompleteHandler(LlamalabHandler):
    _gone = False
    _generation: Optional[Generation] = None

    def on_connection_close(self) -> None:
        self._gone = True
        if self._generation is not None:
            self._generation.cancel()  # superseded or abandoned: free the model within a token

    @web.authenticated
    @authorized
    async def post(self) -> None:
        request = self.body_as(CompletionRequest)
        ctx = cursor_context(request)
        params = self.manager.params(None, **completion_params(ctx, request.max_tokens or DEFAULT_MAX_TOKENS))
        prompted = _Prompted(ctx, params)
        started = time.monotonic()
        generation = await self.manager.start(request.model, len(request.prefix) + len(request.suffix), prompted)
        self._generation = generation
        if self._gone:
            generation.cancel()
        try:
            if request.stream:
                await self._stream(generation, ctx, prompted)
            else:
                generated, stopped = await self._generate(generation, ctx, prompted)
                if not self._gone:
                    self.reply(self._reply(generation, ctx, prompted, generated, stopped))
        except StreamClosedError:
            generation.cancel()
        finally:
            await generation.aclose()
            self.log.debug("llamalab: completion (%s, fim=%s) in %.3f s", ctx.mode, prompted.fim,
                           time.monotonic() - started)

    async def _generate(self, generation: Generation, ctx: CursorContext, prompted: "_Prompted") -> tuple[str, bool]:
        """Run the generation to its end or to the stop rules; (raw text, stopped by a rule)."""
        raw, generated = "", ""
        async for piece in generation:  # the prompt was built (and healed) by manager.start
            raw += piece
            generated = strip_healed(raw, prompted.healed)
            if should_stop_completion(generated, ctx):
                await _stop(generation)
                return generated, True
        return generated, False

    async def _stream(self, generation: Generation, ctx: CursorContext, prompted: _Prompted) -> None:
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        raw, generated, sent, stopped = "", "", "", False
        try:
            async for piece in generation:
                raw += piece
                generated = strip_healed(raw, prompted.healed)
                stopped = should_stop_completion(generated, ctx)
                text = postprocess_completion(generated, ctx)
                if text and text != sent:
                    sent = text
                    await self._event(CompletionChunk(text=text).model_dump_json())
                if stopped:
                    await _stop(generation)
                    break
            await self._event(self._reply(generation, ctx, prompted, generated, stopped).model_dump_json())
        except (BadRequest, LlamalabError) as exc:  # the status is sent: report in the stream
            error = exc.error if isinstance(exc, BadRequest) else error_message(exc, log=self.log)
            await self._event(error.model_dump_json())
        self.finish(set_content_type="text/event-stream")

    async def _event(self, data: str) -> None:
        if self._gone:
            raise StreamClosedError()
        self.write(f"data: {data}\n\n")
        await self.flush()

    def _reply(self, generation: Generation, ctx: CursorContext, prompted: _Prompted, generated: str,
               stopped: bool) -> CompletionReply:
        result: Optional[GenerationResult] = generation.result
        if stopped:
            reason = "stop"
        elif result is None:
            reason = "cancelled"
        else:
            reason = result.finish_reason
        if reason == "cancelled" and not stopped and not generated:
            text = ""
        else:
            text = postprocess_completion(generated, ctx)
        usage = Usage(prompt_tokens=result.prompt_tokens if result else 0,
                      completion_tokens=result.completion_tokens if result else 0,
                      time_to_first_token_s=result.time_to_first_token_s if result else None,
                      duration_s=result.duration_s if result else 0.0)
        return CompletionReply(text=text, fim=prompted.fim, model=generation.model, finish_reason=reason,
                               usage=usage)


async def _stop(generation: Generation) -> None:
    """Cancel a generation whose suggestion is complete and let it end (within a token), so its
    result, and the token counts in it, are there."""
    generation.cancel()
    async for _ in generation:
        pass


def handlers() -> list[tuple[str, type]]:
    return [(r"/llamalab/complete", CompleteHandler)]

