"""``RemoteEngine``: the Engine interface over an OpenAI-compatible HTTP server.

Works with llama.cpp's ``llama-server`` (alone or spreading layers over ``rpc-server`` workers),
llama-cpp-python's ``python -m llama_cpp.server``, vLLM and llamalab's own Jupyter extension:
``/v1/completions`` and ``/v1/chat/completions`` streamed as server-sent events, ``/v1/models``
to describe the model and to list the served ones (``list_models``, bounded against a hostile
server). Messages name the server by ``shown_url``, its URL without credentials or query.
Cancelling closes the HTTP stream, which these servers take as the signal to stop generating
(llama-server then frees the request's slot).

What else a server offers is probed once per engine (``capabilities()``, ``remote_probe``): llama-server answers
``/props``, and then prompts may be token ids (its ``/completion``), ``/tokenize`` and
``/detokenize`` work, and a fill-in-the-middle prompt built by the suggestion service is sent to
its ``/infill`` route when the model has FIM tokens. A server without a route gets one logged
line naming what is missing and the fallback: no ``/infill`` means code completions from the
prefix only, no tokenize route means approximate token counts (4 characters a token).

httpx errors are translated here: a refused or timed-out connection becomes
``ServerUnreachableError``, an error status, an error event, an unreadable answer or a
stream that breaks off without finishing ``ServerResponseError``.

What the server does not report stays unknown: ``prompt_tokens`` is 0 unless the server
sends usage (``stream_options.include_usage`` is asked for; llama-cpp-python's server
ignores it), ``reused_prompt_tokens`` (KV-cache hits: OpenAI's ``cached_tokens`` or
llama-server's ``timings.cache_n``) is None unless the server says, and prompts are not
trimmed to the context window (``overflow`` is the server's business: it answers an error for
a prompt that does not fit).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Generator, Iterator, Optional, Sequence
from urllib.parse import urlsplit, urlunsplit

from ..errors import ConfigError, EngineError, ServerResponseError, ServerUnreachableError
from ..fim import FimTokens
from ..templates import Message, _coerce
from .base import Engine, GenerationParams, GenerationResult, ModelDescription, TokenStream
from .remote_probe import CHARS_PER_TOKEN, ServerCapabilities, ServerProbe

__all__ = ["MAX_LISTED_MODELS", "MAX_MODEL_ID_CHARS", "RemoteEngine", "ServerCapabilities"]

MAX_LISTED_MODELS = 100  # the most ids ``list_models`` keeps
MAX_MODEL_ID_CHARS = 200  # a longer id is skipped
MAX_LISTING_BYTES = 16 << 20  # the most of a /v1/models answer that is read


_HINTS = {
    401: ("the server wants a valid key: set LLAMALAB_REMOTE_API_KEY (in Jupyter also the remote_api_key "
          "setting; in Python api_key=...)"),
    403: ("the server refuses this key for that route: ask its administrator for a key that opens it "
          "(LLAMALAB_REMOTE_API_KEY / remote_api_key)"),
    404: "check the base URL (it should point at the server's root or its /v1)",
}


def _html_text(page: str) -> str:
    """The text of an HTML error page (its head and tags dropped): what a proxy or a plain web
    server answers for a route it does not have."""
    import re

    page = re.sub(r"(?is)<(head|script|style)\b.*?</\1\s*>", " ", page[:20_000])
    return re.sub(r"<[^>]*>", " ", page)


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
        self.timings: dict[str, Any] = {}  # llama-server's: cache_n, prompt_n, predicted_n
        self.evaluated: Optional[int] = None  # llama-server's tokens_evaluated (the prompt's length)
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
        self.shown_url = self.redact_url(self.root_url)  # what messages and descriptions name
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(headers=headers,
                                    timeout=httpx.Timeout(timeout, connect=connect_timeout))
        self._model = model
        self._streams: set[_Cancel] = set()
        self._lock = threading.Lock()
        self._probe = ServerProbe(self.shown_url, self._request)  # it names the server in messages only

    @staticmethod
    def redact_url(url: str) -> str:
        """``url`` without ``user:password@``, query string or fragment (safe to show or log)."""
        parts = urlsplit(url.strip())
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit((parts.scheme, host, parts.path, "", "")).rstrip("/")

    # -- HTTP helpers -----------------------------------------------------------------
    def _unreachable(self, exc: Exception) -> ServerUnreachableError:
        detail = " ".join(str(exc).split()) or "no details"
        return ServerUnreachableError(
            f"cannot reach the model server at {self.shown_url} ({type(exc).__name__}: {detail}); "
            "check that it is running and the URL is right."
        )

    @staticmethod
    def _error_text(body: str) -> str:
        """The message of an error answer: its JSON ``error``, or an HTML page's text, shortened."""
        try:
            data = json.loads(body)
        except ValueError:
            data = _html_text(body) if body.lstrip()[:1] == "<" else body
        error = data.get("error", data) if isinstance(data, dict) else data
        if isinstance(error, dict):
            error = error.get("message") or error.get("detail") or error
        return " ".join(str(error).split())[:300] or "no details"

    def _raise_for_status(self, response: Any, route: str) -> None:
        if response.status_code >= 400:
            response.read()
            hint = _HINTS.get(response.status_code)
            raise ServerResponseError(
                f"{self.shown_url}{route} answered HTTP {response.status_code}: "
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
                f"{self.shown_url}{route} answered something that is not JSON; "
                "check that the URL points at an OpenAI-compatible server.",
                status_code=response.status_code) from None

    def _models(self) -> list[dict[str, Any]]:
        data = self._request("GET", "/v1/models")
        entries = data.get("data") if isinstance(data, dict) else None
        if not entries:
            raise ServerResponseError(f"{self.shown_url} serves no model (/v1/models is empty); "
                                      "load a model on the server.")
        return [e for e in entries if isinstance(e, dict)]

    def list_models(self) -> list[str]:
        """The model ids the server lists at ``/v1/models``, in its order, bounded against a
        hostile server: the answer is read up to ``MAX_LISTING_BYTES``, at most
        ``MAX_LISTED_MODELS`` ids are kept, each once; an id that is not a string, is empty,
        longer than ``MAX_MODEL_ID_CHARS`` or holds control characters is skipped. The engine's
        timeouts bound each step (a lister wants short ones). An empty listing is ``[]``."""
        import httpx

        route = "/v1/models"
        try:
            with self._client.stream("GET", self.root_url + route) as response:
                self._raise_for_status(response, route)
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_LISTING_BYTES:
                        raise ServerResponseError(
                            f"{self.shown_url}{route} answered more than {MAX_LISTING_BYTES >> 20} MiB; "
                            "check that the URL points at an OpenAI-compatible server.")
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise self._unreachable(exc) from None
        except httpx.HTTPError as exc:  # e.g. a body that does not decode
            raise ServerResponseError(f"{self.shown_url}{route} answered something unreadable ({type(exc).__name__}); "
                                      "check that the URL points at an OpenAI-compatible server.") from None
        try:
            data = json.loads(bytes(body))
        except ValueError:
            data = None
        entries = data.get("data") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise ServerResponseError(f"{self.shown_url}{route} answered without a model list; "
                                      "check that the URL points at an OpenAI-compatible server.")
        ids: list[str] = []
        for entry in entries:
            model_id = entry.get("id") if isinstance(entry, dict) else None
            if (isinstance(model_id, str) and 0 < len(model_id) <= MAX_MODEL_ID_CHARS
                    and model_id.isprintable() and model_id not in ids):
                ids.append(model_id)
                if len(ids) == MAX_LISTED_MODELS:
                    break
        return ids

    def server_kind(self) -> str:
        """``"llamalab serve"``, ``"llama-server"`` or ``"openai-compatible"`` (any other server),
        from ``/props`` alone (fetched once per engine, shared with ``capabilities()``)."""
        return self._probe.kind() if self._probe.props() else "openai-compatible"

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
                raise ServerResponseError(f"{self.shown_url} sent an event that is not JSON "
                                          f"({data[:80]!r}); is it an OpenAI-compatible server?") from None
            if isinstance(event, dict) and "error" in event:
                raise ServerResponseError(f"{self.shown_url} reported: {self._error_text(data)}")
            if isinstance(event, dict):
                progress.events += 1
                yield event

    def _read(self, response: Any, progress: _Progress, cancel: _Cancel,
              start: float) -> Generator[str, None, None]:
        """Text pieces of an OpenAI stream (``choices``) or of llama-server's own routes
        (``/completion``, ``/infill``: ``content``, and ``stop`` on the last event)."""
        for event in self._events(response, progress):
            if "choices" in event:
                choice = (event.get("choices") or [{}])[0]
                text = choice.get("text")
                if text is None:
                    text = (choice.get("delta") or {}).get("content") or ""
                progress.finish = choice.get("finish_reason") or progress.finish
            else:
                text = event.get("content") or ""
                if event.get("stop"):
                    progress.finish = "length" if event.get("stop_type") == "limit" else "stop"
                if isinstance(event.get("tokens_evaluated"), int):
                    progress.evaluated = event["tokens_evaluated"]
            if text:
                if progress.first is None:
                    progress.first = time.perf_counter() - start
                progress.parts.append(text)
                yield text
            progress.usage = event.get("usage") or progress.usage
            progress.timings = event.get("timings") or progress.timings
            if cancel.event.is_set():
                return

    def _broken_off(self, route: str, body: dict[str, Any], progress: _Progress) -> ServerResponseError:
        """The error for a stream that ended without a finish reason or ``[DONE]``.

        Some servers (llama-cpp-python's) fail a streamed request after answering 200, e.g.
        for a prompt longer than the context window, and just close the stream. When nothing
        came, the same request unstreamed with one new token gets the server's own error."""
        if progress.events == 0 and route.startswith("/v1/"):
            plain = {k: v for k, v in body.items() if k != "stream_options"}
            self._request("POST", route, json={**plain, "stream": False, "max_tokens": 1})
        return ServerResponseError(
            f"{self.shown_url}{route} ended the stream without finishing it "
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
        return self._result(progress, finish, time.perf_counter() - start)

    @staticmethod
    def _result(progress: _Progress, finish: str, duration: float) -> GenerationResult:
        usage, timings = progress.usage, progress.timings
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None  # OpenAI's KV-cache hits
        if not isinstance(cached, int):
            cached = timings.get("cache_n")  # llama-server's own routes
        prompt_tokens = usage.get("prompt_tokens") or progress.evaluated
        if not prompt_tokens and isinstance(timings.get("prompt_n"), int):
            prompt_tokens = timings["prompt_n"] + (cached if isinstance(cached, int) else 0)
        completion = usage.get("completion_tokens") or timings.get("predicted_n") or len(progress.parts)
        return GenerationResult(
            text="".join(progress.parts), finish_reason=finish,  # type: ignore[arg-type]
            prompt_tokens=int(prompt_tokens or 0), completion_tokens=int(completion),
            time_to_first_token_s=progress.first, duration_s=duration,
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

    # -- capabilities -----------------------------------------------------------------
    def capabilities(self) -> ServerCapabilities:
        """What the server offers beyond the OpenAI routes (probed once; see ``ServerProbe``)."""
        return self._probe.capabilities()

    # -- token-level prompts (llama-server) ---------------------------------------------
    @property
    def accepts_token_prompts(self) -> bool:
        return self.capabilities().token_prompts

    def fim_tokens(self) -> FimTokens:
        return self.capabilities().fim

    @property
    def context_size(self) -> Optional[int]:
        return self.capabilities().context_size or self.describe().context_length

    @staticmethod
    def _native_body(params: GenerationParams) -> dict[str, Any]:
        body = {k: v for k, v in RemoteEngine._body(params).items() if k not in ("max_tokens", "stream_options")}
        return {**body, "n_predict": params.max_tokens, "cache_prompt": True}

    def _split_fim(self, tokens: Sequence[int], fim: FimTokens) -> Optional[tuple[list[int], list[int]]]:
        """The prefix and suffix ids of an infilling prompt ``[BOS] PRE prefix SUF suffix MID``."""
        ids = list(tokens)
        if fim.bos is not None and ids[:1] == [fim.bos]:
            ids = ids[1:]
        if len(ids) < 3 or ids[0] != fim.pre or ids[-1] != fim.mid or fim.suf not in ids:
            return None
        cut = ids.index(fim.suf)
        return ids[1:cut], ids[cut + 1:-1]

    def complete_tokens(self, tokens: Sequence[int], params: Optional[GenerationParams] = None) -> TokenStream:
        """A continuation of token ids on llama-server: an infilling prompt goes to ``/infill``
        (which lays it out again from its prefix and suffix ids), any other to ``/completion``."""
        caps = self.capabilities()
        if not caps.token_prompts:
            raise NotImplementedError(f"the server at {self.shown_url} takes prompts as text only")
        body = self._native_body(params or GenerationParams())
        parts = self._split_fim(tokens, caps.fim) if caps.infill else None
        cancel = _Cancel()
        if parts is not None:
            body.update(input_prefix=parts[0], input_suffix=parts[1])
            return TokenStream(self._stream("/infill", body, cancel), cancel)
        return TokenStream(self._stream("/completion", {**body, "prompt": list(tokens)}, cancel), cancel)

    def detokenize(self, tokens: Sequence[int]) -> str:
        if not self.capabilities().token_prompts:
            return super().detokenize(tokens)
        data = self._request("POST", "/detokenize", json={"tokens": [int(t) for t in tokens]})
        content = data.get("content") if isinstance(data, dict) else None
        if not isinstance(content, str):
            raise ServerResponseError(f"{self.shown_url}/detokenize answered without text; is it llama-server?")
        return content

    # -- the rest of the interface ----------------------------------------------------
    def tokenize(self, text: str, *, add_bos: bool = False, special: bool = False) -> list[int]:
        """The server's token ids for ``text``.

        llama-server honours ``add_bos`` and ``special``. llama-cpp-python's server always
        parses special tokens (``special`` cannot be turned off there) and adds BOS when the
        model's metadata says so; that BOS is removed unless ``add_bos`` is set (a model whose
        metadata adds none gets none, as the server never says which id BOS is)."""
        probe = self._probe
        if probe.tokenize_route is None:
            probe.find_tokenize_route()
        if probe.tokenize_route is None:
            raise EngineError(f"{self.shown_url} offers no tokenize route (it is not a llama.cpp server); "
                              "count tokens with a local engine instead.")
        if probe.tokenize_route == "/tokenize":
            return probe.tokens("/tokenize", {"content": text, "add_special": add_bos, "parse_special": special})
        tokens = probe.tokens("/extras/tokenize", {"input": text})
        prefix = probe.auto_prefix or []
        if prefix and not add_bos and tokens[:len(prefix)] == prefix:
            tokens = tokens[len(prefix):]
        return tokens

    def count_tokens(self, text: str) -> int:
        """The server's count, or ``len(text) / 4`` rounded up where it cannot tokenize."""
        if not self.capabilities().tokenize:
            return -(-len(text) // CHARS_PER_TOKEN)
        return len(self.tokenize(text))

    def describe(self) -> ModelDescription:
        entries = self._models()
        entry = next((e for e in entries if e.get("id") == self._model), entries[0])
        meta = entry.get("meta") or {}
        props = self._probe.props()
        n_ctx = meta.get("n_ctx") or (props.get("default_generation_settings") or {}).get("n_ctx")
        return ModelDescription(
            name=str(entry.get("id", self._model or "unknown")), backend="remote", location=self.shown_url,
            context_length=n_ctx, train_context_length=meta.get("n_ctx_train"),
            n_parallel=props.get("total_slots"), notices=self._probe.missing,
        )

    def cancel(self) -> None:
        with self._lock:
            streams = list(self._streams)
        for cancel in streams:
            cancel()

    def close(self) -> None:
        self.cancel()
        self._client.close()
