"""``RemoteEngine``: the Engine interface over an OpenAI-compatible HTTP server.

Works with llama.cpp's ``llama-server``, llama-cpp-python's ``python -m llama_cpp.server``,
vLLM and llamalab's own Jupyter extension: ``/v1/completions`` and ``/v1/chat/completions``
streamed as server-sent events, ``/v1/models`` to describe the model. Cancelling closes the
HTTP stream, which these servers take as the signal to stop generating. Tokenizing uses
the server's non-standard route when it has one (``/tokenize`` of llama-server,
``/extras/tokenize`` of llama-cpp-python's server).

httpx errors are translated here: a refused or timed-out connection becomes
``ServerUnreachableError``, an error status, an error event, an unreadable answer or a
stream that breaks off without finishing ``ServerResponseError``.

What the server does not report stays unknown: ``prompt_tokens`` is 0 unless the server
sends usage (``stream_options.include_usage`` is asked for; llama-cpp-python's server
ignores it), and prompts are not trimmed to the context window (``overflow`` is the
server's business: it answers an error for a prompt that does not fit).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Generator, Iterator, Optional, Sequence

from ..errors import ConfigError, EngineError, ServerResponseError, ServerUnreachableError
from ..templates import Message, _coerce
from .base import Engine, GenerationParams, GenerationResult, ModelDescription, TokenStream

__all__ = ["RemoteEngine"]

_HINTS = {
    401: "pass the server's key as api_key",
    403: "pass the server's key as api_key",
    404: "check the base URL (it should point at the server's root or its /v1)",
}


class _Cancel:
    """A cancel flag that also closes the HTTP response it guards, to unblock a read."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.response: Any = None

    def __call__(self) -> None:
        self.event.set()
        response = self.response
        if response is not None:
            try:
                response.close()
            except Exception:  # closing from another thread may race the reader; the flag decides
                pass


class _Progress:
    """What one stream has received so far."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.events = 0
        self.finish: Optional[str] = None
        self.done = False  # saw ``data: [DONE]``
        self.usage: dict[str, Any] = {}
        self.first: Optional[float] = None


class RemoteEngine(Engine):
    """A model served elsewhere over the OpenAI-compatible API."""

    def __init__(self, base_url: str, *, model: Optional[str] = None, api_key: Optional[str] = None,
                 timeout: float = 120.0, connect_timeout: float = 5.0) -> None:
        import httpx

        url = base_url.strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"the server URL {base_url!r} must start with http:// or https://, "
                              "e.g. http://127.0.0.1:8000/v1.")
        self.base_url = url if url.endswith("/v1") else url + "/v1"
        self.root_url = self.base_url[: -len("/v1")]
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(headers=headers,
                                    timeout=httpx.Timeout(timeout, connect=connect_timeout))
        self._model = model
        self._streams: set[_Cancel] = set()
        self._lock = threading.Lock()
        self._tokenize_route: Optional[str] = None
        self._auto_prefix: Optional[list[int]] = None

    # -- HTTP helpers -----------------------------------------------------------------
    def _unreachable(self, exc: Exception) -> ServerUnreachableError:
        detail = " ".join(str(exc).split()) or "no details"
        return ServerUnreachableError(
            f"cannot reach the model server at {self.root_url} ({type(exc).__name__}: {detail}); "
            "check that it is running and the URL is right."
        )

    @staticmethod
    def _error_text(body: str) -> str:
        try:
            data = json.loads(body)
        except ValueError:
            data = body
        error = data.get("error", data) if isinstance(data, dict) else data
        if isinstance(error, dict):
            error = error.get("message") or error.get("detail") or error
        return " ".join(str(error).split())[:300] or "no details"

    def _raise_for_status(self, response: Any, route: str) -> None:
        if response.status_code >= 400:
            response.read()
            hint = _HINTS.get(response.status_code)
            raise ServerResponseError(
                f"{self.root_url}{route} answered HTTP {response.status_code}: "
                f"{self._error_text(response.text)}" + (f"; {hint}." if hint else ""),
                status_code=response.status_code)

    def _request(self, method: str, route: str, **kwargs: Any) -> Any:
        """The JSON answer to one plain (not streamed) request."""
        import httpx

        try:
            response = self._client.request(method, self.root_url + route, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        self._raise_for_status(response, route)
        try:
            return response.json()
        except ValueError:
            raise ServerResponseError(
                f"{self.root_url}{route} answered something that is not JSON; "
                "check that the URL points at an OpenAI-compatible server.",
                status_code=response.status_code) from None

    def _models(self) -> list[dict[str, Any]]:
        data = self._request("GET", "/v1/models")
        entries = data.get("data") if isinstance(data, dict) else None
        if not entries:
            raise ServerResponseError(f"{self.root_url} serves no model (/v1/models is empty); "
                                      "load a model on the server.")
        return [e for e in entries if isinstance(e, dict)]

    def model_name(self) -> str:
        if self._model is None:
            self._model = str(self._models()[0]["id"])
        return self._model

    # -- streaming --------------------------------------------------------------------
    @staticmethod
    def _body(params: GenerationParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "max_tokens": params.max_tokens, "temperature": params.temperature, "top_p": params.top_p,
            "top_k": params.top_k, "min_p": params.min_p, "repeat_penalty": params.repeat_penalty,
            "stream": True, "stream_options": {"include_usage": True},
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        return body

    def _events(self, response: Any, progress: _Progress) -> Iterator[dict[str, Any]]:
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue  # blank separators, ``event:`` lines and ``: ping`` comments
            data = line[len("data:"):].strip()
            if data == "[DONE]":
                progress.done = True
                return
            try:
                event = json.loads(data)
            except ValueError:
                raise ServerResponseError(f"{self.root_url} sent an event that is not JSON "
                                          f"({data[:80]!r}); is it an OpenAI-compatible server?") from None
            if isinstance(event, dict) and "error" in event:
                raise ServerResponseError(f"{self.root_url} reported: {self._error_text(data)}")
            if isinstance(event, dict):
                progress.events += 1
                yield event

    def _read(self, response: Any, progress: _Progress, cancel: _Cancel,
              start: float) -> Generator[str, None, None]:
        for event in self._events(response, progress):
            choice = (event.get("choices") or [{}])[0]
            text = choice.get("text")
            if text is None:
                text = (choice.get("delta") or {}).get("content") or ""
            if text:
                if progress.first is None:
                    progress.first = time.perf_counter() - start
                progress.parts.append(text)
                yield text
            progress.finish = choice.get("finish_reason") or progress.finish
            progress.usage = event.get("usage") or progress.usage
            if cancel.event.is_set():
                return

    def _broken_off(self, route: str, body: dict[str, Any], progress: _Progress) -> ServerResponseError:
        """The error for a stream that ended without a finish reason or ``[DONE]``.

        Some servers (llama-cpp-python's) fail a streamed request after answering 200, e.g.
        for a prompt longer than the context window, and just close the stream. When nothing
        came, the same request unstreamed with one new token gets the server's own error."""
        if progress.events == 0:
            plain = {k: v for k, v in body.items() if k != "stream_options"}
            self._request("POST", route, json={**plain, "stream": False, "max_tokens": 1})
        return ServerResponseError(
            f"{self.root_url}{route} ended the stream without finishing it "
            f"(after {len(progress.parts)} pieces); see the server's log.")

    def _stream(self, route: str, body: dict[str, Any],
                cancel: _Cancel) -> Generator[str, None, GenerationResult]:
        import httpx

        start = time.perf_counter()
        progress = _Progress()
        with self._lock:
            self._streams.add(cancel)
        try:
            if not cancel.event.is_set():
                # A connection of its own (not kept alive): a stream the server breaks off
                # or the client cancels must not leave a dead connection in the pool.
                with self._client.stream("POST", self.root_url + route, json=body,
                                         headers={"Connection": "close"}) as response:
                    cancel.response = response
                    self._raise_for_status(response, route)
                    if not cancel.event.is_set():
                        yield from self._read(response, progress, cancel, start)
        except (httpx.TransportError, httpx.StreamError) as exc:
            if not cancel.event.is_set():
                raise self._unreachable(exc) from None
        finally:
            with self._lock:
                self._streams.discard(cancel)
        if cancel.event.is_set():
            finish = "cancelled"
        elif progress.finish is None and not progress.done:
            raise self._broken_off(route, body, progress)
        else:
            finish = progress.finish if progress.finish in ("stop", "length") else "stop"
        usage = progress.usage
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None  # OpenAI's KV-cache hits
        return GenerationResult(
            text="".join(progress.parts), finish_reason=finish,  # type: ignore[arg-type]
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or len(progress.parts)),
            time_to_first_token_s=progress.first, duration_s=time.perf_counter() - start,
            reused_prompt_tokens=int(cached) if isinstance(cached, int) else None,
        )

    def complete(self, prompt: str, params: Optional[GenerationParams] = None) -> TokenStream:
        body = {"model": self.model_name(), "prompt": prompt, **self._body(params or GenerationParams())}
        cancel = _Cancel()
        return TokenStream(self._stream("/v1/completions", body, cancel), cancel)

    def chat(self, messages: Sequence[Message | dict], params: Optional[GenerationParams] = None) -> TokenStream:
        wire = [{"role": m.role, "content": m.content} for m in _coerce(messages)]
        body = {"model": self.model_name(), "messages": wire, **self._body(params or GenerationParams())}
        cancel = _Cancel()
        return TokenStream(self._stream("/v1/chat/completions", body, cancel), cancel)

    # -- the rest of the interface ----------------------------------------------------
    def _tokens(self, route: str, payload: dict[str, Any]) -> list[int]:
        data = self._request("POST", route, json=payload)
        try:
            return [int(t) for t in data["tokens"]]
        except (KeyError, TypeError, ValueError):
            raise ServerResponseError(f"{self.root_url}{route} answered without a token list; "
                                      "count tokens with a local engine instead.") from None

    def _find_tokenize_route(self) -> None:
        """Try llama-server's route, then llama-cpp-python's, on the empty text; remember the
        one that answers, and for llama-cpp-python what it adds to every text ([] or [BOS])."""
        for route, payload in (("/tokenize", {"content": ""}), ("/extras/tokenize", {"input": ""})):
            try:
                prefix = self._tokens(route, payload)
            except ServerResponseError as exc:
                if exc.status_code in (404, 405):
                    continue
                raise
            self._tokenize_route, self._auto_prefix = route, prefix
            return
        raise EngineError(f"{self.root_url} offers no tokenize route (it is not a llama.cpp server); "
                          "count tokens with a local engine instead.")

    def tokenize(self, text: str, *, add_bos: bool = False, special: bool = False) -> list[int]:
        """The server's token ids for ``text``.

        llama-server honours ``add_bos`` and ``special``. llama-cpp-python's server always
        parses special tokens (``special`` cannot be turned off there) and adds BOS when the
        model's metadata says so; that BOS is removed unless ``add_bos`` is set (a model whose
        metadata adds none gets none, as the server never says which id BOS is)."""
        if self._tokenize_route is None:
            self._find_tokenize_route()
        if self._tokenize_route == "/tokenize":
            return self._tokens("/tokenize", {"content": text, "add_special": add_bos,
                                              "parse_special": special})
        tokens = self._tokens("/extras/tokenize", {"input": text})
        prefix = self._auto_prefix or []
        if prefix and not add_bos and tokens[:len(prefix)] == prefix:
            tokens = tokens[len(prefix):]
        return tokens

    def describe(self) -> ModelDescription:
        entries = self._models()
        entry = next((e for e in entries if e.get("id") == self._model), entries[0])
        meta = entry.get("meta") or {}
        return ModelDescription(
            name=str(entry.get("id", self._model or "unknown")), backend="remote", location=self.root_url,
            context_length=meta.get("n_ctx"), train_context_length=meta.get("n_ctx_train"),
        )

    def cancel(self) -> None:
        with self._lock:
            streams = list(self._streams)
        for cancel in streams:
            cancel()

    def close(self) -> None:
        self.cancel()
        self._client.close()
