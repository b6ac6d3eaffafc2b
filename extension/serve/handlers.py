"""The routes of ``llamalab serve``: the OpenAI-compatible routes of the Jupyter extension
(``OpenAIRoutes``, one implementation for both servers) behind API keys, plus ``/health`` and
``/metrics``.

    GET  /health                 {"status": "ok"|"loading"|"stopping", "model"}; no key needed
    GET  /metrics                Prometheus' text format
    GET  /v1/models              the model served
    POST /v1/completions         text (or token-id) completion; "stream": true for server-sent events
    POST /v1/chat/completions    chat completion; likewise
    POST /tokenize, /detokenize  llama-server's routes
    POST /infill                 llama-server's fill-in-the-middle route
    POST /completion             llama-server's completion route (text or token ids)
    GET  /props                  llama-server's properties (context per request, slots)

Every route but ``/health`` needs ``Authorization: Bearer <key>`` (``llamalab serve keys add``);
a key in the URL is refused (URLs end up in logs). ``/metrics`` (every user's usage) opens only
to keys of role ``metrics`` or ``admin``, the model's routes only to ``user`` and ``admin`` keys. Each key has its own limits on requests
running at once (more get 429) and on ``max_tokens`` (more get 400), and its name is the user the
scheduler serves in turn with the others.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from tornado import web

from llamalab import ApiKey, GenerationResult

from ..handlers import BadRequest
from ..kernel_access import bearer
from ..messages import ErrorMessage
from ..openai import ROUTES, OpenAIRoutes, route_handler
from .metrics import ServeMetrics
from .state import ServeState

__all__ = ["routes"]

_KEY_PARAMETERS = {"api_key", "apikey", "key", "token", "access_token", "authorization"}


class ServeHandler(OpenAIRoutes, web.RequestHandler):
    """A route of ``llamalab serve``: the key is checked before anything else."""

    needs_key = True
    route = ""
    key: Optional[ApiKey] = None
    _counted = False
    _recorded = False
    forbidden_hint = ("send an API key as 'Authorization: Bearer llk-...'; the server's administrator makes "
                      "one with `llamalab serve keys add NAME`")

    @property
    def state(self) -> ServeState:
        return self.settings["llamalab_serve"]

    @property
    def log(self) -> Any:  # type: ignore[override]
        return self.state.log

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")

    def check_xsrf_cookie(self) -> None:  # keys, not cookies: no cross-site forgery to guard against
        pass

    def prepare(self) -> None:
        if any(name.lower() in _KEY_PARAMETERS for name in self.request.arguments) or "llk-" in self.request.query:
            raise BadRequest(ErrorMessage(code="bad_request", message=(
                "send the API key in the Authorization header ('Authorization: Bearer llk-...'), never in the "
                "URL: URLs end up in logs and proxies; that key should now be revoked and replaced.")))
        if not self.needs_key:
            return
        if self.state.stopping:
            self.set_header("Connection", "close")
            raise BadRequest(ErrorMessage(code="busy", message="the server is stopping; try again in a moment."))
        presented = bearer(self.request.headers)
        if presented is None:
            raise web.HTTPError(401)
        key = self.state.keys.check(presented)
        if key is None:
            self.set_header("WWW-Authenticate", 'Bearer error="invalid_token"')
            self.fail(ErrorMessage(code="forbidden", message="this API key is not valid (unknown or revoked); ask "
                                   "the server's administrator for a new one."), status=401)
            return
        refusal = self.refusal(key)
        if refusal:
            self.fail(ErrorMessage(code="forbidden", message=refusal), status=403)
            return
        self.key, self.user, self.max_tokens_cap = key, key.name, key.max_tokens
        self.stream_write_timeout_s = self.state.config.stream_write_timeout_s
        if self.state.running_for(key.name) >= key.max_concurrent:
            raise BadRequest(ErrorMessage(code="busy", message=(
                f"this key already has {key.max_concurrent} requests running (its limit); wait for one to "
                "finish, or ask the administrator for a higher max_concurrent.")))
        self.state.started(key.name)
        self._counted = True

    def refusal(self, key: ApiKey) -> Optional[str]:
        """Why ``key`` may not use this route, or None."""
        if key.may_generate:
            return None
        return (f"the key '{key.name}' is a {key.role} key: it reads /metrics only; use a user key for the "
                "model (`llamalab serve keys add NAME`).")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code == 401:  # tornado cleared the headers before calling this
            self.set_header("WWW-Authenticate", "Bearer")
        super().write_error(status_code, **kwargs)

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self.state.ended(self.user)

    def on_connection_close(self) -> None:
        super().on_connection_close()
        self._uncount()
        self._count_request("closed")  # the client left before the answer ended

    def on_finish(self) -> None:
        self._uncount()
        self._count_request(str(self.get_status()))

    def _count_request(self, status: str) -> None:
        if self.route and not self._recorded:
            self._recorded = True
            self.metrics.requests.labels(self.user or "-", self.route, status).inc()

    @property
    def metrics(self) -> ServeMetrics:
        return self.state.metrics

    def observe(self, result: GenerationResult, began: float) -> None:
        first = self._first_piece_at - began if self._first_piece_at is not None else None
        self.metrics.generation(self.user, result, first)


class HealthHandler(ServeHandler):
    needs_key = False

    def get(self) -> None:
        status, code = self.state.health()
        self.set_status(code)
        self.finish(json.dumps({"status": status, "model": self.state.model_name}))


class MetricsHandler(ServeHandler):
    route = "metrics"

    def refusal(self, key: ApiKey) -> Optional[str]:
        if key.may_read_metrics:
            return None
        return (f"the key '{key.name}' may not read /metrics, which shows every user's usage; the administrator "
                "makes a key for Prometheus with `llamalab serve keys add NAME --role metrics`.")

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(self.metrics.render())


class NotFoundHandler(ServeHandler):
    needs_key = False

    def prepare(self) -> None:
        raise BadRequest(ErrorMessage(code="not_found", message=f"no route {self.request.path} here; see "
                                      "/v1/models, /v1/completions, /v1/chat/completions, /health, /metrics."))


def routes() -> list[tuple[str, type]]:
    return [(r"/health", HealthHandler), (r"/metrics", MetricsHandler)] + [
        (rf"/{path}", route_handler(ServeHandler, method, work, route=label)) for path, method, work, label in ROUTES]
