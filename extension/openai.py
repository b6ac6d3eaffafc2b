"""The OpenAI-compatible surface, so kernels, a local language server and any OpenAI
client reuse the server's one model:

    GET  /llamalab/v1/models             the default (or loaded) model first, then the others allowed
    POST /llamalab/v1/completions        text completion (the prompt as text or token ids);
                                         ``"stream": true`` for server-sent events
    POST /llamalab/v1/chat/completions   chat completion; likewise
    POST /llamalab/tokenize              llama-server's tokenize route ({"content"} -> {"tokens"})
    POST /llamalab/detokenize            and its detokenize route ({"tokens"} -> {"content"})
    POST /llamalab/infill                and its fill-in-the-middle route ({"input_prefix", "input_suffix"})
    POST /llamalab/completion            and its completion route (a prompt as text or token ids)
    GET  /llamalab/props                 and its properties (context per request, slots)

With these, ``RemoteEngine`` treats this server as it treats llama-server (token-id prompts,
fill-in-the-middle, cache hits), so a suggestion through it is planned as on a local model.

The routes' work is ``OpenAIRoutes``, a mixin that ``llamalab serve`` puts on its own handlers
(API keys instead of Jupyter's login), so both servers answer the same way.

``llamalab.RemoteEngine("http://host:port/llamalab", api_key=...)`` speaks to it like to
any other OpenAI-compatible server. Authentication is Jupyter's (``Authorization: token``
or ``Bearer`` with the server's token, or a login cookie plus XSRF), and also the
kernels' key (see ``kernel_access``). Errors follow OpenAI's shape,
``{"error": {"message", "type", "code"}}``; a stream that fails after it started ends with
such an error event. A client that disconnects cancels its generation.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Annotated, Any, Callable, Literal, Optional, Union

from jupyter_server.auth.decorator import authorized
from pydantic import BaseModel, ConfigDict, Field, StrictStr
from tornado import web
from tornado.iostream import StreamClosedError

from llamalab import GenerationParams, GenerationResult, LlamalabError

from .errors import NoInfillError, error_message, http_status
from .handlers import BadRequest, JsonRoutes, LlamalabHandler
from .kernel_access import KernelKeyIdentity
from .manager import Generation
from .messages import ErrorMessage

__all__ = ["ChatCompletionRequest", "CompletionRequest", "OpenAIRoutes", "ROUTES", "handlers", "route_handler"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send fields we do not use (user, logprobs, ...)

    model: Optional[str] = None
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0, le=5)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    top_k: Optional[int] = Field(None, ge=0)
    min_p: Optional[float] = Field(None, ge=0, le=1)
    repeat_penalty: Optional[float] = Field(None, gt=0)
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    stream: bool = False
    stream_options: Optional[dict[str, Any]] = None

    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


_MAX_TOKEN_IDS = 1 << 20  # bounds a token prompt's size before anything is done with it
TokenId = Annotated[int, Field(ge=0, lt=1 << 31)]


class CompletionRequest(_Request):
    prompt: Union[str, list[StrictStr], list[TokenId], list[list[TokenId]]]
    suffix: Optional[str] = Field(None, max_length=0, description="fill-in-the-middle: use /infill")
    echo: Literal[False] = False

    def text_or_tokens(self) -> Union[str, list[int]]:
        """The one prompt: text, or token ids (OpenAI's array form, as llama-server takes it)."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return prompt
        if prompt and all(isinstance(p, int) for p in prompt):
            if len(prompt) > _MAX_TOKEN_IDS:
                raise BadRequest(ErrorMessage(code="prompt_too_long", message=f"the prompt has {len(prompt)} "
                                              f"token ids, over {_MAX_TOKEN_IDS}; shorten it."))
            return list(prompt)  # type: ignore[arg-type]
        if len(prompt) != 1:
            raise BadRequest(ErrorMessage(code="bad_request", message="send one prompt per request."))
        return self.prompt[0] if isinstance(prompt[0], str) else CompletionRequest(prompt=prompt[0]).text_or_tokens()


class _Part(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[_Part], None] = None

    def plain(self) -> dict[str, str]:
        content = self.content if isinstance(self.content, str) else \
            "".join(p.text for p in self.content or [])
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class ChatCompletionRequest(_Request):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    content: str
    add_special: bool = False
    parse_special: bool = True
    model: Optional[str] = None


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    tokens: list[TokenId] = Field(max_length=_MAX_TOKEN_IDS)
    model: Optional[str] = None


class InfillRequest(_Request):
    """llama-server's ``/infill`` body (the fields llamalab uses): text or token ids."""

    input_prefix: Union[str, list[TokenId]] = Field("", max_length=_MAX_TOKEN_IDS)
    input_suffix: Union[str, list[TokenId]] = Field("", max_length=_MAX_TOKEN_IDS)
    n_predict: Optional[int] = Field(None, ge=1)


class NativeCompletionRequest(_Request):
    """llama-server's ``/completion`` body (the fields llamalab uses): text or token ids."""

    prompt: Union[str, list[TokenId]] = Field(max_length=_MAX_TOKEN_IDS)
    n_predict: Optional[int] = Field(None, ge=1)


class OpenAIRoutes(JsonRoutes):
    """The OpenAI-compatible routes' work, on any tornado handler: Jupyter's (below) and
    ``llamalab serve``'s (``llamalab.extension.serve``). ``user`` is who asks (the scheduler's
    fairness; an API key's name on a team server) and ``max_tokens_cap`` this caller's limit."""

    user = ""
    max_tokens_cap: Optional[int] = None
    stream_write_timeout_s = 60.0  # a client that stops reading its stream is let go after this
    _gone = False
    _generation: Optional[Generation] = None
    _first_piece_at: Optional[float] = None

    def error_body(self, error: ErrorMessage) -> str:
        return json.dumps(_openai_error(error))

    def on_connection_close(self) -> None:
        self._gone = True
        if self._generation is not None:
            self._generation.cancel()  # the client left: free the model for others

    def params_of(self, request: _Request, max_tokens: Optional[int] = None) -> GenerationParams:
        stop = [request.stop] if isinstance(request.stop, str) else request.stop
        wanted = max_tokens or request.max_tokens
        cap = self.max_tokens_cap
        if cap is not None and wanted is not None and wanted > cap:
            raise BadRequest(ErrorMessage(code="bad_request", message=f"max_tokens {wanted} is over this key's "
                                          f"limit of {cap}; ask for {cap} or fewer."))
        return self.manager.params(None, max_tokens=wanted or cap, temperature=request.temperature,
                                   top_p=request.top_p, top_k=request.top_k, min_p=request.min_p,
                                   repeat_penalty=request.repeat_penalty, stop=stop, seed=request.seed,
                                   user=self.user or None)

    # -- the routes -------------------------------------------------------------------
    async def list_models(self) -> None:
        manager = self.manager
        loaded = await manager.load(None) if manager.remote else manager.loaded
        first = loaded.name if loaded else manager.canonical(None)
        names = [first] + [m.name for m in manager.store.list() if m.name != first and manager.is_allowed(m.name)]
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "llamalab"} for name in names]
        if loaded is not None:
            data[0]["meta"] = {"n_ctx": loaded.context_length, "backend": loaded.backend,
                               "quantization": loaded.quantization}
        self.finish(json.dumps({"object": "list", "data": data}))

    async def completions(self) -> None:
        request = self.body_as(CompletionRequest)
        prompt, params = request.text_or_tokens(), self.params_of(request)
        if isinstance(prompt, str):
            generation = await self.manager.complete(prompt, params, request.model)
        else:
            generation = await self.manager.complete_tokens(prompt, params, request.model)
        await self.run(
            generation, request, "text_completion",
            chunk=lambda piece: {"choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": None}]},
            last=lambda r: {"choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": r.finish_reason}]},
            whole=lambda r: {"choices": [{"index": 0, "text": r.text, "logprobs": None,
                                          "finish_reason": r.finish_reason}], "usage": _usage(r)})

    async def chat_completions(self) -> None:
        request = self.body_as(ChatCompletionRequest)
        params = self.params_of(request, request.max_completion_tokens)
        generation = await self.manager.chat([m.plain() for m in request.messages], params, request.model)
        await self.run(
            generation, request, "chat.completion",
            chunk=lambda piece: {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]},
            last=lambda r: {"choices": [{"index": 0, "delta": {}, "finish_reason": r.finish_reason}]},
            whole=lambda r: {"choices": [{"index": 0, "message": {"role": "assistant", "content": r.text},
                                          "finish_reason": r.finish_reason}], "usage": _usage(r)})

    async def tokenize(self) -> None:
        request = self.body_as(TokenizeRequest)
        tokens = await self.manager.tokenize(request.content, add_bos=request.add_special,
                                             special=request.parse_special, model=request.model)
        self.finish(json.dumps({"tokens": tokens}))

    async def detokenize(self) -> None:
        request = self.body_as(DetokenizeRequest)
        self.finish(json.dumps({"content": await self.manager.detokenize(request.tokens, request.model)}))

    async def infill(self) -> None:
        """llama-server's ``/infill``: the text between ``input_prefix`` and ``input_suffix``;
        ``stream`` sends ``{"content", "stop"}`` events as its ``/completion`` does. A model
        without fill-in-the-middle tokens gets 501, as from llama-server."""
        request = self.body_as(InfillRequest)
        params = self.params_of(request, request.n_predict)
        try:
            generation, healed = await self.manager.infill(request.input_prefix, request.input_suffix, params,
                                                           request.model)
        except NoInfillError as exc:
            self.fail(ErrorMessage(code="bad_request", message=str(exc)), status=501)
            return
        unhealed = _Unheal(len(healed))
        await self.run(
            generation, request, "native",
            chunk=lambda piece: {"content": unhealed(piece), "stop": False},
            last=lambda r: {"content": "", "stop": True, **_native_usage(r)},
            whole=lambda r: {"content": r.text[len(healed):], "stop": True, **_native_usage(r)})

    async def native_completion(self) -> None:
        """llama-server's ``/completion``: a prompt as text or token ids, answered in its shape."""
        request = self.body_as(NativeCompletionRequest)
        params = self.params_of(request, request.n_predict)
        if isinstance(request.prompt, str):
            generation = await self.manager.complete(request.prompt, params, request.model)
        else:
            generation = await self.manager.complete_tokens(request.prompt, params, request.model)
        await self.run(
            generation, request, "native",
            chunk=lambda piece: {"content": piece, "stop": False},
            last=lambda r: {"content": "", "stop": True, **_native_usage(r)},
            whole=lambda r: {"content": r.text, "stop": True, **_native_usage(r)})

    async def props(self) -> None:
        """llama-server's ``/props``, the part a client sizes its prompts by: the context per
        request and the slots (loads the model if it is not yet)."""
        loaded = await self.manager.load(None)
        self.finish(json.dumps({"default_generation_settings": {"n_ctx": loaded.context_length},
                                "total_slots": self.manager.config.n_parallel, "model_alias": loaded.name,
                                "build_info": "llamalab"}))

    # -- answering --------------------------------------------------------------------
    async def run(self, generation: Generation, request: _Request, kind: str,
                  chunk: Callable[[str], dict[str, Any]], last: Callable[[GenerationResult], dict[str, Any]],
                  whole: Callable[[GenerationResult], dict[str, Any]]) -> None:
        """Stream ``generation`` as SSE, or answer it whole, in OpenAI's shapes (llama-server's
        for its native routes, ``kind == "native"``)."""
        self._generation = generation
        envelope = kind != "native"  # llama-server's own routes have no OpenAI envelope
        began = time.perf_counter()
        try:
            if not request.stream:
                async for _ in generation:
                    self._first_piece_at = self._first_piece_at or time.perf_counter()
                if self._gone:  # nobody to answer
                    return
                result = _finished(generation.result)
                self.observe(result, began)
                head = self._envelope(kind, generation.model) if envelope else {"model": generation.model}
                self.finish(json.dumps({**head, **whole(result)}))
                return
            self.set_header("Content-Type", "text/event-stream")
            self.set_header("Cache-Control", "no-cache")
            self.set_header("X-Accel-Buffering", "no")
            head = self._envelope(kind + ".chunk" if kind == "chat.completion" else kind, generation.model) \
                if envelope else {}
            try:
                first = chunk("")
                if kind == "chat.completion":  # the role comes first, as OpenAI sends it
                    first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
                    await self._event({**head, **first})
                async for piece in generation:
                    self._first_piece_at = self._first_piece_at or time.perf_counter()
                    await self._event({**head, **chunk(piece)})
                result = _finished(generation.result)
                self.observe(result, began)
                await self._event({**head, **last(result)})
                if request.include_usage():
                    await self._event({**head, "choices": [], "usage": _usage(result)})
                if envelope:
                    self.write("data: [DONE]\n\n")
            except (BadRequest, LlamalabError) as exc:  # the status is sent: report in the stream
                error = exc.error if isinstance(exc, BadRequest) else error_message(exc, log=self.log)
                await self._event(_openai_error(error))
            self.end_stream()
        except StreamClosedError:
            generation.cancel()
        finally:
            await generation.aclose()

    def end_stream(self) -> None:
        self.finish()

    def observe(self, result: GenerationResult, began: float) -> None:
        """Called once a generation has its result (``llamalab serve`` counts it in its metrics);
        ``began`` and ``_first_piece_at`` are ``time.perf_counter()`` values."""

    async def _event(self, data: dict[str, Any]) -> None:
        if self._gone:
            raise StreamClosedError()
        self.write(f"data: {json.dumps(data)}\n\n")
        try:
            await asyncio.wait_for(self.flush(), self.stream_write_timeout_s)
        except asyncio.TimeoutError:  # the client stopped reading: free its slot for others
            self.log.info("llamalab: %s stopped reading its stream for %g s; ending it", self.request.remote_ip,
                          self.stream_write_timeout_s)
            self._gone = True
            self.request.connection.close()
            raise StreamClosedError() from None

    @staticmethod
    def _envelope(kind: str, model: str) -> dict[str, Any]:
        prefix = "chatcmpl" if kind.startswith("chat") else "cmpl"
        return {"id": f"{prefix}-{uuid.uuid4().hex[:24]}", "object": kind, "created": int(time.time()),
                "model": model}


class _Unheal:
    """Drops the first ``n`` characters of a stream of pieces (the healed end of the prefix)."""

    def __init__(self, n: int) -> None:
        self.left = n

    def __call__(self, piece: str) -> str:
        cut = min(self.left, len(piece))
        self.left -= cut
        return piece[cut:]


def _native_usage(result: GenerationResult) -> dict[str, Any]:
    """The last event of llama-server's ``/completion`` and ``/infill``: counts, the cache's share."""
    stop_type = {"length": "limit", "stop": "eos"}.get(result.finish_reason, result.finish_reason)
    cached = result.reused_prompt_tokens or 0
    return {"tokens_predicted": result.completion_tokens, "tokens_evaluated": result.prompt_tokens,
            "tokens_cached": cached, "stop_type": stop_type,
            "timings": {"cache_n": cached, "prompt_n": result.prompt_tokens - cached,
                        "predicted_n": result.completion_tokens}}


class OpenAIHandler(OpenAIRoutes, LlamalabHandler):
    """Jupyter's authentication plus the kernels' key."""

    @property
    def identity_provider(self) -> Any:  # type: ignore[override]
        inner = super().identity_provider
        key = self.settings.get("llamalab_kernel_key")
        return KernelKeyIdentity(inner, key) if key else inner

    def end_stream(self) -> None:
        self.finish(set_content_type="text/event-stream")  # APIHandler's finish would say JSON


def _finished(result: Optional[GenerationResult]) -> GenerationResult:
    assert result is not None
    if result.finish_reason == "cancelled":
        raise BadRequest(ErrorMessage(code="engine_error", message="the generation was cancelled on the server "
                                      "(the model was switched or the server is stopping); try again."))
    return result


def _usage(result: GenerationResult) -> dict[str, Any]:
    usage: dict[str, Any] = {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                             "total_tokens": result.prompt_tokens + result.completion_tokens}
    if result.reused_prompt_tokens is not None:  # OpenAI's field for prompt tokens served from a cache
        usage["prompt_tokens_details"] = {"cached_tokens": result.reused_prompt_tokens}
    return usage


def _openai_error(error: ErrorMessage) -> dict[str, Any]:
    kind = "invalid_request_error" if http_status(error.code) < 500 else "server_error"
    return {"error": {"message": error.message, "type": kind, "code": error.code}}


# The routes both servers answer, relative to their root: (path, HTTP method, the ``OpenAIRoutes``
# method doing the work, the label ``llamalab serve`` counts it under in its metrics).
ROUTES: tuple[tuple[str, str, str, str], ...] = (
    ("v1/models", "get", "list_models", "models"),
    ("v1/completions", "post", "completions", "completions"),
    ("v1/chat/completions", "post", "chat_completions", "chat.completions"),
    ("tokenize", "post", "tokenize", "tokenize"),
    ("detokenize", "post", "detokenize", "detokenize"),
    ("infill", "post", "infill", "infill"),
    ("completion", "post", "native_completion", "completion"),
    ("props", "get", "props", "props"),
)


def route_handler(base: type, method: str, work: str, guard: Callable[[Any], Any] = lambda f: f,
                  **attributes: Any) -> type:
    """A handler class on ``base`` whose ``method`` awaits ``self.<work>()``, wrapped by ``guard``
    (Jupyter's authentication and authorization; ``llamalab serve`` checks keys in ``prepare``)."""
    async def handle(self: Any) -> None:
        await getattr(self, work)()

    name = "".join(part.title() for part in work.split("_")) + base.__name__
    return type(name, (base,), {method: guard(handle), "__module__": base.__module__, **attributes})


def _jupyter_guard(method: str) -> Callable[[Any], Any]:
    action = authorized if method == "get" else authorized("execute")  # reading the model list, or running it
    return lambda handle: web.authenticated(action(handle))


def handlers() -> list[tuple[str, type]]:
    return [(rf"/llamalab/{path}", route_handler(OpenAIHandler, method, work, _jupyter_guard(method)))
            for path, method, work, _ in ROUTES]
