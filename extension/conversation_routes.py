"""REST routes of the user's stored conversations (``conversations.ConversationStore``).

    GET    /llamalab/conversations               ConversationList (newest first, plus unreadable files
                                                 set aside, as ``problems``)
    POST   /llamalab/conversations               ConversationCreate -> StoredConversation (201)
    POST   /llamalab/conversations/import        ConversationImport -> ImportReply (ids already kept are
                                                 skipped: the browser's earlier conversations, sent once)
    GET    /llamalab/conversations/{id}          StoredConversation
    PUT    /llamalab/conversations/{id}          ConversationUpdate -> StoredConversation
    PATCH  /llamalab/conversations/{id}          ConversationPatch (rename, system prompt) -> StoredConversation
    DELETE /llamalab/conversations/{id}          204

A write naming an older ``revision`` than the file's gets 409 ``conflict`` (another tab wrote
first: read it again). An id that is not 1-128 letters, digits, ``_`` or ``-`` (``import`` is
reserved) gets 400; a body
over the server's cap, a conversation over its size cap or one conversation too many get 413
``too_large``. Every write is announced on the chat WebSockets as ``conversation_changed``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, TypeVar

from jupyter_server.auth.decorator import authorized
from tornado import web

from .conversations import ConversationError, ConversationStore
from .handlers import BadRequest, LlamalabHandler
from .messages import ConversationCreate, ConversationImport, ConversationPatch, ConversationUpdate, ErrorMessage

__all__ = ["handlers"]

T = TypeVar("T")
MAX_IMPORT_BYTES = 64 * 1024 * 1024


class ConversationHandler(LlamalabHandler):
    @property
    def store(self) -> ConversationStore:
        return self.settings["llamalab_conversations"]

    def check_size(self, limit: int) -> None:
        size = len(self.request.body or b"")
        if size > limit:
            raise BadRequest(ErrorMessage(code="too_large", message=(
                f"the body has {size} bytes, over this server's limit of {limit}; send less.")))

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args)
        except ConversationError as exc:
            raise BadRequest(ErrorMessage(code=exc.code, message=" ".join(str(exc).split()))) from None  # type: ignore[arg-type]

    def body_limit(self) -> int:
        return self.store.limits.max_conversation_bytes + 64 * 1024


class ConversationsHandler(ConversationHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply(await self.call(self.store.list))

    @web.authenticated
    @authorized
    async def post(self) -> None:
        self.check_size(self.body_limit())
        request = self.body_as(ConversationCreate, empty_ok=True)
        self.reply(await self.call(self.store.create, request), status=201)


class ImportHandler(ConversationHandler):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        self.check_size(MAX_IMPORT_BYTES)
        request = self.body_as(ConversationImport)
        self.reply(await self.call(self.store.import_, request))


class OneConversationHandler(ConversationHandler):
    @web.authenticated
    @authorized
    async def get(self, conversation_id: str) -> None:
        self.reply(await self.call(self.store.get, conversation_id))

    @web.authenticated
    @authorized
    async def put(self, conversation_id: str) -> None:
        self.check_size(self.body_limit())
        update = self.body_as(ConversationUpdate)
        self.reply(await self.call(self.store.replace, conversation_id, update))

    @web.authenticated
    @authorized
    async def patch(self, conversation_id: str) -> None:
        self.check_size(self.body_limit())
        patch = self.body_as(ConversationPatch)
        self.reply(await self.call(self.store.patch, conversation_id, patch))

    @web.authenticated
    @authorized
    async def delete(self, conversation_id: str) -> None:
        await self.call(self.store.delete, conversation_id)
        self.set_status(204)
        self.finish()


def handlers() -> list[tuple[str, type]]:
    return [
        (r"/llamalab/conversations", ConversationsHandler),
        (r"/llamalab/conversations/import", ImportHandler),
        (r"/llamalab/conversations/(?P<conversation_id>[^/]+)", OneConversationHandler),
    ]
