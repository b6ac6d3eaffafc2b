"""REST routes under ``/llamalab/``: models, hardware, settings, the wire schema (jobs: ``job_routes``,
inline completion: ``completions``, the OpenAI-compatible routes: ``openai``).

Every handler is a jupyter_server ``APIHandler``: ``@web.authenticated`` and
``@authorized`` (resource ``llamalab``) on each method, XSRF checked on browser POSTs by
the base class. Replies and errors are the pydantic models of ``messages``; a body that
is not JSON or does not validate gets a 400 ``ErrorMessage`` naming the field.

    GET   /llamalab/models                  ModelsReply (store, catalog, the loaded model; with remote_url,
                                            the remote server's models, listed at most every 15 s)
    POST  /llamalab/models/load             LoadRequest -> LoadedModel (remote: use one of its models)
    POST  /llamalab/models/unload           -> UnloadReply
    GET   /llamalab/pulls                   JobList
    POST  /llamalab/pulls                   PullRequest -> PullJob (202)
    GET   /llamalab/pulls/{id}              PullJob
    GET   /llamalab/pulls/{id}/events       server-sent JobProgressMessage events until it ends
    POST  /llamalab/complete                CompletionRequest -> CompletionReply, or with stream=true
                                            server-sent CompletionChunk events then the CompletionReply
                                            (inline completions; in ``completions``)
    GET   /llamalab/hardware                HardwareReply (the doctor report)
    GET   /llamalab/settings                SettingsReply
    PATCH /llamalab/settings                SettingsUpdate -> SettingsReply
    GET   /llamalab/schema                  the wire messages' JSON schema
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from http.client import responses
from typing import Any, Optional, TypeVar

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from pydantic import BaseModel, ValidationError
from tornado import web

from llamalab import CATALOG, LlamalabError, build_report, format_report

from .errors import error_message, http_status, validation_message
from .jobs import Jobs
from .manager import EngineManager
from .messages import (CatalogModelInfo, ErrorMessage, HardwareReply, LoadRequest, ModelsReply, SettingsReply,
                       SettingsUpdate, StoredModelInfo, UnloadReply)

__all__ = ["AUTH_RESOURCE", "BadRequest", "JsonRoutes", "LlamalabHandler", "handlers"]

AUTH_RESOURCE = "llamalab"
M = TypeVar("M", bound=BaseModel)
_HTTP_CODES = {400: "bad_request", 401: "forbidden", 403: "forbidden", 404: "not_found", 405: "bad_request"}


class BadRequest(Exception):
    """Raised by a handler to answer ``error`` (its HTTP status follows the error's code)."""

    def __init__(self, error: ErrorMessage) -> None:
        super().__init__(error.message)
        self.error = error


class JsonRoutes:
    """What every llamalab route does on any tornado handler: JSON bodies validated into pydantic
    models, replies and one-line errors out. Mixed into Jupyter's handlers (``LlamalabHandler``)
    and ``llamalab serve``'s alike; ``settings`` holds ``llamalab_manager`` (and ``llamalab_jobs``)."""

    settings: dict[str, Any]
    request: Any
    log: Any
    _reason: str
    forbidden_hint = ("not logged in, or not allowed: log in to Jupyter, or send the server's token "
                      "as 'Authorization: token ...'")

    @property
    def manager(self) -> EngineManager:
        return self.settings["llamalab_manager"]

    @property
    def jobs(self) -> Jobs:
        return self.settings["llamalab_jobs"]

    def reply(self, model: BaseModel, status: int = 200) -> None:
        self.set_status(status)
        self.finish(model.model_dump_json())

    def fail(self, error: ErrorMessage, status: Optional[int] = None) -> None:
        self.set_status(status or http_status(error.code))
        self.finish(self.error_body(error))

    def error_body(self, error: ErrorMessage) -> str:
        return error.model_dump_json()

    def body_as(self, cls: type[M], *, empty_ok: bool = False) -> M:
        raw = self.request.body or b""
        if not raw.strip() and empty_ok:
            return cls()
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(ErrorMessage(code="bad_request", message=f"the body is not JSON ({exc}).")) from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise BadRequest(validation_message(exc)) from None

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, (BadRequest, LlamalabError)):  # expected: the client gets the message
            self.log.info("llamalab: %s %s: %s", self.request.method, self.request.path, value)
        else:
            super().log_exception(typ, value, tb)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = (kwargs.get("exc_info") or (None, None, None))[1]
        status: Optional[int] = None
        if isinstance(exc, BadRequest):
            error = exc.error
        elif isinstance(exc, LlamalabError):
            error = error_message(exc, log=self.log)
        elif isinstance(exc, web.HTTPError) or exc is None:
            text = exc.log_message % exc.args if exc is not None and exc.log_message and exc.args else \
                (exc.log_message if exc is not None else None)
            if not text and status_code in (401, 403):
                text = self.forbidden_hint
            error = ErrorMessage(code=_HTTP_CODES.get(status_code, "internal"),  # type: ignore[arg-type]
                                 message=text or self._reason or responses.get(status_code, "error"))
            status = status_code
        else:  # a bug: log_exception has logged the traceback
            error = ErrorMessage(code="internal", message="internal error; see the Jupyter server's log.")
        self.fail(error, status)


class LlamalabHandler(JsonRoutes, ExtensionHandlerMixin, APIHandler):
    """Base of the extension's HTTP routes: Jupyter's authentication and authorization."""

    auth_resource = AUTH_RESOURCE


class ModelsHandler(LlamalabHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        manager = self.manager
        remote = await manager.remote_server()  # None without remote_url; its error is a field, not a failure
        loaded = manager.loaded
        stored = await asyncio.to_thread(manager.store.list)
        self.reply(ModelsReply(
            default_model=manager.default_model(),
            loaded=loaded,
            stored=[StoredModelInfo(name=m.name, path=m.path, size_bytes=m.size_bytes, architecture=m.architecture,
                                    quantization=m.quantization, context_length=m.context_length,
                                    license=m.license, source=m.source,
                                    loaded=loaded is not None and loaded.name == m.name,
                                    allowed=manager.is_allowed(m.name)) for m in stored],
            catalog=[CatalogModelInfo(name=e.name, description=e.description, parameters=e.parameters,
                                      license=e.license, license_url=e.license_url, chat_format=e.chat_format,
                                      quantizations=list(e.quantizations), default_quant=e.default_quant,
                                      requires_license_acceptance=e.requires_license_acceptance)
                     for e in CATALOG],
            remote=remote,
        ))


class LoadHandler(LlamalabHandler):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        request = self.body_as(LoadRequest, empty_ok=True)
        self.reply(await self.manager.load(request.model))


class UnloadHandler(LlamalabHandler):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        self.reply(UnloadReply(model=await self.manager.unload()))


class HardwareHandler(LlamalabHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        c = self.manager.config
        report = await asyncio.to_thread(build_report, n_ctx=c.n_ctx, kv_size=c.kv_size, store=self.manager.store,
                                         remote_url=c.remote_url, remote_api_key=c.remote_api_key)
        data = dataclasses.asdict(report)
        self.reply(HardwareReply(**data, text=format_report(report)))


class SettingsHandler(LlamalabHandler):
    def settings_reply(self) -> SettingsReply:
        c = self.manager.config
        return SettingsReply(
            default_model=self.manager.default_model(), n_ctx=c.n_ctx, n_gpu_layers=c.n_gpu_layers,  # type: ignore[arg-type]
            system_prompt=c.system_prompt, remote_url=c.remote_url, remote_api_key_set=bool(c.remote_api_key),
            allowed_models=list(c.allowed_models), max_queued=c.max_queued, max_prompt_chars=c.max_prompt_chars,
            max_tokens_limit=c.max_tokens_limit, store_root=str(self.manager.store.root),
            kernel_access=bool(self.settings.get("llamalab_kernel_key")),
        )

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply(self.settings_reply())

    @web.authenticated
    @authorized
    async def patch(self) -> None:
        update = self.body_as(SettingsUpdate)
        await self.manager.update(**update.model_dump(exclude_none=True))
        self.reply(self.settings_reply())


class SchemaHandler(LlamalabHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        from .schema import wire_schema

        self.finish(json.dumps(wire_schema()))


def handlers() -> list[tuple[str, type]]:
    """The REST routes, relative to the server's base URL."""
    return [
        (r"/llamalab/models", ModelsHandler),
        (r"/llamalab/models/load", LoadHandler),
        (r"/llamalab/models/unload", UnloadHandler),
        (r"/llamalab/hardware", HardwareHandler),
        (r"/llamalab/settings", SettingsHandler),
        (r"/llamalab/schema", SchemaHandler),
    ]
