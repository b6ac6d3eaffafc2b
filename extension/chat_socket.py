"""The chat WebSocket, ``/llamalab/chat``: many conversations over one connection.

A connection opens with a ``hello`` (protocol version, the loaded model). Each ``chat``
request streams ``token`` messages and ends with ``done`` (or ``error``), all carrying the
request's ``id``; conversations are independent, so several can stream at once (they queue
FIFO on the one model), while a conversation answers one request at a time. ``cancel``
and ``reset`` are acknowledged at once and the cancelled generation still ends with its
``done`` (``finish_reason == "cancelled"``).

A ``conversation_id`` names one of the user's stored conversations (``conversations``; made when
new): the earlier turns come from its file, and when a turn ends its question and answer (or the
error) are appended there, so the connection keeps no history of its own and another tab or a
reload sees the same conversation; every connection hears ``conversation_changed`` after each
write. One request answers in a conversation at a time, over all connections. ``reset`` empties
the conversation's messages (an answer still running is then not kept); ``history`` reads its turns.
A conversation with no messages yet may be seeded by the request's ``history`` (a client that kept
turns of its own); the stored turns win when there are any. A request naming the
notebook's ``kernel`` gets the names that kernel defines (``llamalab.kernel_names.format_names``,
the ones its message mentions first) in that turn's system prompt; a kernel that is busy, gone or
slow to answer adds nothing (or what it defined when last read). Anything malformed gets an ``error`` reply and
the connection stays open. ``model`` is a store name or catalog reference (never a path or URL;
unknown: ``model_not_found``); ``system``, ``history`` and ``content`` are size-checked, alone and
together, against ``max_prompt_chars`` before anything is tokenized. ``model_changed`` and
``job_progress`` events are pushed to every connection.

Authentication is Jupyter's (token or login cookie); the origin is checked as for
Jupyter's own kernel WebSockets, and the user must be authorized to ``execute`` on the
``llamalab`` resource.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any, Optional, Sequence, Union

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import ws_authenticated
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from jupyter_server.extension.handler import ExtensionHandlerMixin
from pydantic import BaseModel, TypeAdapter, ValidationError
from tornado import web
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from .conversations import ConversationError, ConversationStore, check_id, turns_of
from .errors import BusyError, PromptTooLongError, error_message, validation_message
from .handlers import AUTH_RESOURCE
from .kernel_context import reader_for
from .manager import EngineManager, Generation
from .messages import (CLIENT_TYPES, AckMessage, CancelRequest, ChatRequest, ChatTurn, ClientMessage,
                       ConversationEntry, DoneMessage, ErrorMessage, HelloMessage, HistoryMessage, HistoryRequest,
                       ResetRequest, TokenMessage, TurnUsage, Usage)

__all__ = ["ChatSocket"]

_CLIENT = TypeAdapter(ClientMessage)
MAX_TURNS = 200  # history kept per conversation; the engine trims what does not fit the context
KERNEL_WAIT_S = 2.0  # the longest a chat waits for its kernel's names (a slower read adds them next time)


def prompt_messages(system: Optional[str], earlier: Sequence[ChatTurn], content: str, seed: Sequence[ChatTurn] = (),
                    max_chars: Optional[int] = None) -> list[dict[str, str]]:
    """The prompt's messages; the conversation's own oldest turns are left out (a question and its
    answer at a time) while all together would be over ``max_chars`` (the seed was checked whole)."""
    head = [{"role": "system", "content": system}] if system else []
    turns = [*seed, *earlier][-MAX_TURNS:]
    if max_chars is not None:
        chars = len(system or "") + len(content) + sum(len(t.content) for t in turns)
        while chars > max_chars and len(turns) > len(seed):
            dropped, turns = turns[:2], turns[2:]
            chars -= sum(len(t.content) for t in dropped)
    return head + [t.model_dump() for t in turns] + [{"role": "user", "content": content}]


def with_system_block(messages: list[dict[str, str]], block: str) -> list[dict[str, str]]:
    """``messages`` with ``block`` appended to the system prompt (one made when there is none)."""
    if not block:
        return messages
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": f"{messages[0]['content']}\n\n{block}"}, *messages[1:]]
    return [{"role": "system", "content": block}, *messages]


@dataclasses.dataclass
class Running:
    conversation_id: str
    generation: Optional[Generation] = None
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True
        if self.generation is not None:
            self.generation.cancel()


class ChatSocket(WebSocketMixin, WebSocketHandler, ExtensionHandlerMixin, JupyterHandler):  # type: ignore[misc]
    auth_resource = AUTH_RESOURCE

    def set_default_headers(self) -> None:
        """No HTML security headers on a WebSocket upgrade (as Jupyter's kernel sockets)."""

    @property
    def manager(self) -> EngineManager:
        return self.settings["llamalab_manager"]

    @property
    def conversations(self) -> ConversationStore:
        return self.settings["llamalab_conversations"]

    @ws_authenticated
    async def get(self, *args: Any, **kwargs: Any) -> None:
        allowed = await ensure_async(self.authorizer.is_authorized(self, self.current_user, "execute",
                                                                   AUTH_RESOURCE))
        if not allowed:
            raise web.HTTPError(403, "not authorized to use llamalab")
        await super().get(*args, **kwargs)

    # -- connection -------------------------------------------------------------------
    def open(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().open(*args, **kwargs)  # starts Jupyter's keep-alive pings
        self._running: dict[str, Running] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._unsubscribe = [self.manager.add_listener(self.send),
                             self.settings["llamalab_jobs"].add_listener(self.send),
                             self.conversations.add_listener(self.send)]
        config = self.manager.config
        self.send(HelloMessage(model=self.manager.loaded, default_model=self.manager.default_model(),
                               max_prompt_chars=config.max_prompt_chars, max_tokens_limit=config.max_tokens_limit))

    def on_close(self) -> None:
        for remove in getattr(self, "_unsubscribe", []):
            remove()
        for running in getattr(self, "_running", {}).values():
            running.cancel()

    def send(self, message: BaseModel) -> None:
        if self.ws_connection is None or self.ws_connection.is_closing():
            return
        try:
            self.write_message(message.model_dump_json())
        except WebSocketClosedError:
            pass

    def _error(self, exc: BaseException, request_id: Optional[str]) -> ErrorMessage:
        if isinstance(exc, ConversationError):
            return ErrorMessage(id=request_id, code=exc.code, message=" ".join(str(exc).split()))  # type: ignore[arg-type]
        return error_message(exc, request_id, log=self.log)

    # -- dispatch -----------------------------------------------------------------------
    def on_message(self, raw: Union[str, bytes]) -> None:
        request_id: Optional[str] = None
        try:
            data = json.loads(raw)
            if isinstance(data, dict) and isinstance(data.get("id"), str):
                request_id = data["id"]
            if isinstance(data, dict) and data.get("type") not in CLIENT_TYPES:
                self.send(ErrorMessage(id=request_id, code="unknown_type",
                                       message=f"unknown message type {data.get('type')!r}; "
                                       f"expected one of: {', '.join(CLIENT_TYPES)}."))
                return
            message = _CLIENT.validate_python(data)
        except (ValueError, UnicodeDecodeError) as exc:
            if isinstance(exc, ValidationError):
                self.send(validation_message(exc, request_id))
            else:
                self.send(ErrorMessage(id=request_id, code="bad_request",
                                       message=f"the message is not JSON ({exc})."))
            return
        try:
            if isinstance(message, ChatRequest):
                self._chat(message)
            elif isinstance(message, CancelRequest):
                self._cancel(message)
            else:
                check_id(message.conversation_id)
                self._spawn(self._reset(message) if isinstance(message, ResetRequest) else self._history(message),
                            message.id)
        except Exception as exc:  # every request gets a reply
            self.send(self._error(exc, message.id))

    def _spawn(self, work: Any, request_id: str) -> None:
        async def guarded() -> None:
            try:
                await work
            except Exception as exc:  # every request gets a reply
                self.send(self._error(exc, request_id))

        task = asyncio.ensure_future(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _history(self, request: HistoryRequest) -> None:
        stored = await asyncio.to_thread(self.conversations.read_if_exists, request.conversation_id)
        turns = turns_of(stored.entries) if stored is not None else []
        self.send(HistoryMessage(id=request.id, conversation_id=request.conversation_id, messages=turns))

    def _chat(self, request: ChatRequest) -> None:
        if request.id in self._running:
            raise BusyError(f"a request with id '{request.id}' is still running; use a new id.")
        check_id(request.conversation_id)
        self.manager.canonical(request.model)  # a store name or catalog reference, never a path
        params = self.manager.params(request.params)  # ConfigError for impossible values
        config = self.manager.config
        seed = list(request.history or ())
        if (chars := sum(len(t.content) for t in seed)) > config.max_prompt_chars:
            raise PromptTooLongError(f"the history has {chars} characters, over this server's limit of "
                                     f"{config.max_prompt_chars}; send fewer earlier turns.")
        self.manager.check_prompt([("the system prompt", len(request.system or config.system_prompt)),
                                   ("the history", chars), ("the message", len(request.content))])
        holder = self.conversations.claim(request.conversation_id, request.id)
        if holder is not None:
            raise BusyError(f"conversation '{request.conversation_id}' is still answering request "
                            f"'{holder}'; wait for it or cancel it.")
        self._running[request.id] = Running(request.conversation_id)
        task = asyncio.ensure_future(self._stream(request, params, seed))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stream(self, request: ChatRequest, params: Any, seed: list[ChatTurn]) -> None:
        running = self._running[request.id]
        generation: Optional[Generation] = None
        store, config = self.conversations, self.manager.config
        epoch = store.epoch(request.conversation_id)
        accepted = False
        try:
            stored = await asyncio.to_thread(store.open_for_chat, request.conversation_id, request.system)
            earlier = turns_of(stored.entries)
            seed = [] if earlier else seed  # the server's own turns win
            system = stored.system if stored.system is not None else config.system_prompt
            messages = prompt_messages(system, earlier, request.content, seed, config.max_prompt_chars)
            accepted = True
            if request.kernel is not None:
                reader = reader_for(self.settings, self.kernel_manager, self.log)
                block = await reader.block(request.kernel.id, request.kernel.execution_count, near=request.content,
                                           wait_s=KERNEL_WAIT_S)
                messages = with_system_block(messages, block)
            generation = await self.manager.chat(messages, params, request.model)
            running.generation = generation
            if running.cancelled:
                generation.cancel()
            async for piece in generation:
                self.send(TokenMessage(id=request.id, conversation_id=request.conversation_id, text=piece))
            result = generation.result
            assert result is not None
            notice = (f"{result.dropped_messages} earlier messages were left out to fit the context window."
                      if result.dropped_messages else None)
            usage = Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                          dropped_messages=result.dropped_messages,
                          time_to_first_token_s=result.time_to_first_token_s, duration_s=result.duration_s)
            answer = ConversationEntry(id=request.id, role="assistant", content=result.text,
                                       finish_reason=result.finish_reason, notice=notice, model=generation.model,
                                       usage=TurnUsage(**usage.model_dump()), time=time.time() * 1000)
            await self._record(request, [_question(request), answer], epoch, seed)
            self.send(DoneMessage(
                id=request.id, conversation_id=request.conversation_id, model=generation.model, text=result.text,
                finish_reason=result.finish_reason, notice=notice, usage=usage))
        except Exception as exc:
            error = self._error(exc, request.id)
            if accepted:  # the question and what went wrong stay in the conversation
                line = ConversationEntry(id=f"e-{request.id}", role="error", content=error.message, code=error.code,
                                         time=time.time() * 1000)
                await self._record(request, [_question(request), line], epoch, seed)
            self.send(error)
        finally:
            if generation is not None:
                await generation.aclose()
            store.release(request.conversation_id, request.id)
            self._running.pop(request.id, None)

    async def _record(self, request: ChatRequest, entries: list[ConversationEntry], epoch: int,
                      seed: Sequence[ChatTurn]) -> None:
        seeded = [ConversationEntry(id=f"h-{request.id}-{i // 2}", role=t.role, content=t.content)  # type: ignore[arg-type]
                  for i, t in enumerate(seed)]
        try:
            await asyncio.to_thread(self.conversations.append, request.conversation_id, entries, epoch, seeded)
        except Exception as exc:  # the answer is still shown; the log says why it was not kept
            self.log.warning("llamalab: could not save the turn of conversation %s: %s", request.conversation_id, exc)

    def _cancel(self, request: CancelRequest) -> None:
        cancelled = []
        for request_id, running in list(self._running.items()):
            if request.target is not None and request_id != request.target:
                continue
            if request.conversation_id is not None and running.conversation_id != request.conversation_id:
                continue
            running.cancel()
            cancelled.append(request_id)
        self.send(AckMessage(id=request.id, of="cancel", cancelled=cancelled))

    async def _reset(self, request: ResetRequest) -> None:
        cancelled = []
        for request_id, running in list(self._running.items()):
            if running.conversation_id == request.conversation_id:
                running.cancel()
                cancelled.append(request_id)
        await asyncio.to_thread(self.conversations.clear, request.conversation_id)  # a running answer is not kept
        self.send(AckMessage(id=request.id, of="reset", cancelled=cancelled))


def _question(request: ChatRequest) -> ConversationEntry:
    shown = request.display if request.display is not None else request.content
    return ConversationEntry(id=request.id, role="user", content=shown,
                             sent=request.content if shown != request.content else None,
                             context=request.context or None, time=time.time() * 1000)
