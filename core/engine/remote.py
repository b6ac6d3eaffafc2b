"""``RemoteEngine``: the Engine interface over an OpenAI-compatible HTTP server.

Works with llama.cpp's ``llama-server``, llama-cpp-python's ``python -m llama_cpp.server``,
vLLM and llamalab's own Jupyter extension: ``/v1/completions`` and ``/v1/chat/completions``
streamed as server-sent events, ``/v1/models`` to describe the model. Cancelling closes the
HTTP stream, which these servers take as the signal to stop generating. Tokenizing uses
the server's non-standard route when it has one (``/tokenize`` of llama-server,
``/extras/tokenize`` of llama-cpp-python's server).

httpx errors are translated here: a refused or timed-out connection becomes
``ServerUnreachableError``, an error status or an error event ``ServerResponseError``.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Generator, Iterator, Optional, Sequence

from ..errors import EngineError, ServerResponseError, ServerUnreachableError
from ..templates import Message, _coerce
from .base import Engine, GenerationParams, GenerationResult, ModelDescription, TokenStream

__all__ = ["RemoteEngine"]


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


class RemoteEngine(Engine):
    """A model served elsewhere over the OpenAI-compatible API."""

    def __init__(self, base_url: str, *, model: Optional[str] = None, api_key: Optional[str] = None,
                 timeout: float = 120.0, connect_timeout: float = 5.0) -> None:
        import httpx

        url = base_url.rstrip("/")
        self.base_url = url if url.endswith("/v1") else url + "/v1"
        self.root_url = self.base_url[: -len("/v1")]
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(headers=headers,
                                    timeout=httpx.Timeout(timeout, connect=connect_timeout))
        self._model = model
        self._streams: set[_Cancel] = set()
        self._lock = threading.Lock()
        self._tokenize_route: Optional[str] = None

    # -- HTTP helpers -----------------------------------------------------------------
    def _unreachable(self, exc: Exception) -> ServerUnreachableError:
        return ServerUnreachableError(
            f"cannot reach the model server at {self.root_url} ({type(exc).__name__}: {exc}); "
            "check that it is running and the URL is right."
        )

    @staticmethod
    def _error_text(body: str) -> str:
        try:
            data = json.loads(body)
        except ValueError:
            return body.strip()[:300] or "no details"
        error = data.get("error", data) if isinstance(data, dict) else data
        if isinstance(error, dict):
            return str(error.get("message") or error.get("detail") or error)[:300]
        return str(error)[:300]

    def _raise_for_status(self, response: Any, route: str) -> None:
        if response.status_code >= 400:
            response.read()
            raise ServerResponseError(
                f"{self.root_url}{route} answered HTTP {response.status_code}: "
                f"{self._error_text(response.text)}", status_code=response.status_code)

    def _request(self, method: str, route: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self._client.request(method, self.root_url + route, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        self._raise_for_status(response, route)
        return response

    def model_name(self) -> str:
        if self._model is None:
            data = self._request("GET", "/v1/models").json().get("data") or []
            if not data:
                raise ServerResponseError(f"{self.root_url} serves no model (/v1/models is empty).")
            self._model = str(data[0]["id"])
        return self._model

    # -- streaming --------------------------------------------------------------------
    @staticmethod
    def _body(params: GenerationParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "max_tokens": params.max_tokens, "temperature": params.temperature, "top_p": params.top_p,
            "top_k": params.top_k, "min_p": params.min_p, "repeat_penalty": params.repeat_penalty,
            "stream": True,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        return body

    def _events(self, response: Any) -> Iterator[dict[str, Any]]:
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[len("data:"):].strip()
            if data == "[DONE]":
                return
            event = json.loads(data)
            if isinstance(event, dict) and "error" in event:
                raise ServerResponseError(f"{self.root_url} reported: {self._error_text(data)}")
            yield event

    def _stream(self, route: str, body: dict[str, Any], cancel: _Cancel) -> Generator[str, None, GenerationResult]:
        import httpx

        start = time.perf_counter()
        first: Optional[float] = None
        parts: list[str] = []
        finish, usage, chunks = "stop", {}, 0
        with self._lock:
            self._streams.add(cancel)
        try:
            with self._client.stream("POST", self.root_url + route, json=body) as response:
                cancel.response = response
                self._raise_for_status(response, route)
                for event in self._events(response):
                    choice = (event.get("choices") or [{}])[0]
                    text = choice.get("text")
                    if text is None:
                        text = (choice.get("delta") or {}).get("content") or ""
                    if text:
                        first = first if first is not None else time.perf_counter() - start
                        parts.append(text)
                        chunks += 1
                        yield text
                    finish = choice.get("finish_reason") or finish
                    usage = event.get("usage") or usage
                    if cancel.event.is_set():
                        break
        except (httpx.TransportError, httpx.StreamError) as exc:
            if not cancel.event.is_set():
                raise self._unreachable(exc) from None
        finally:
            with self._lock:
                self._streams.discard(cancel)
        if cancel.event.is_set():
            finish = "cancelled"
        return GenerationResult(
            text="".join(parts), finish_reason=finish if finish in ("stop", "length", "cancelled") else "stop",
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", chunks)),
            time_to_first_token_s=first, duration_s=time.perf_counter() - start,
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
    def tokenize(self, text: str, *, add_bos: bool = False, special: bool = False) -> list[int]:
        attempts = {
            "/tokenize": {"content": text, "add_special": add_bos, "parse_special": special},
            "/extras/tokenize": {"input": text},
        }
        routes = [self._tokenize_route] if self._tokenize_route else list(attempts)
        for route in routes:
            try:
                response = self._request("POST", route, json=attempts[route])
            except ServerResponseError as exc:
                if exc.status_code in (404, 405):
                    continue
                raise
            self._tokenize_route = route
            return [int(t) for t in response.json()["tokens"]]
        raise EngineError(f"{self.root_url} offers no tokenize route (it is not a llama.cpp server); "
                          "count tokens with a local engine instead.")

    def describe(self) -> ModelDescription:
        data = self._request("GET", "/v1/models").json().get("data") or [{}]
        entry = data[0]
        meta = entry.get("meta") or {}
        return ModelDescription(
            name=str(entry.get("id", self._model or "unknown")), backend="remote", location=self.root_url,
            context_length=meta.get("n_ctx") or meta.get("n_ctx_train"),
            train_context_length=meta.get("n_ctx_train"),
        )

    def cancel(self) -> None:
        with self._lock:
            streams = list(self._streams)
        for cancel in streams:
            cancel()

    def close(self) -> None:
        self.cancel()
        self._client.close()
