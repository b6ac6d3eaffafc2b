"""Each user's chat conversations, kept by the Jupyter server as one JSON file each.

``ConversationStore`` owns a folder (by default ``<jupyter data dir>/llamalab/conversations``; the
extension's ``conversations_dir`` setting moves it): ``<id>.json`` holds a ``StoredConversation``
(``version`` of the format, ``revision`` counting its writes). The REST routes
(``conversation_routes``) list, create, replace, rename and delete them; the chat WebSocket reads a
conversation's history from here and appends each finished turn, so every tab and browser of the
user sees the same conversations and nothing lives only in a page or a connection.

- Writes are atomic (``llamalab.atomic_write_text``: a ``*.part`` file in the same folder, fsynced, renamed).
- Writes to one conversation are serialized by a lock; a replace or patch naming an older
  ``revision`` than the file's gets ``ConflictError`` (HTTP 409): the client reads it again.
- Ids are letters, digits, ``_`` and ``-`` (``ID_RE``): never a path.
- A file that cannot be read is renamed ``<id>.json.corrupt-<timestamp>`` (never deleted) and listed
  among the list's ``problems`` until someone removes it; one from a newer llamalab is left as it is.
- Caps (``Limits``): bytes per conversation, entries per conversation, conversations in all. A
  finished turn that would go over them drops the conversation's oldest entries instead.

Listeners (the chat WebSockets) hear a ``ConversationChangedMessage`` after every write, on the
event loop they subscribed from, whichever thread wrote.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from pydantic import ValidationError

from llamalab import LlamalabError, atomic_write_text

from .messages import (CONVERSATION_VERSION, ChatTurn, ConversationChangedMessage, ConversationCreate,
                       ConversationEntry, ConversationImport, ConversationList, ConversationPatch,
                       ConversationProblem, ConversationSummary, ConversationUpdate, ImportReply, ImportSkip,
                       StoredConversation)

__all__ = ["ConflictError", "ConversationError", "ConversationNotFoundError", "ConversationStore",
           "ConversationTooLargeError", "ID_RE", "InvalidConversationIdError", "Limits", "UNTITLED",
           "default_folder", "title_from", "turns_of"]

ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
UNTITLED = "New conversation"
_CORRUPT = ".corrupt-"


class ConversationError(LlamalabError):
    """A request about conversations that cannot be honoured; ``code`` and ``status`` say how."""

    code = "bad_request"
    status = 400


class InvalidConversationIdError(ConversationError):
    pass


class ConversationNotFoundError(ConversationError):
    code, status = "not_found", 404


class ConflictError(ConversationError):
    code, status = "conflict", 409


class ConversationTooLargeError(ConversationError):
    code, status = "too_large", 413


@dataclasses.dataclass(frozen=True)
class Limits:
    max_conversations: int = 1000
    max_conversation_bytes: int = 4 * 1024 * 1024
    max_entries: int = 400


def default_folder(data_dir: Optional[str] = None) -> Path:
    """``<data_dir>/llamalab/conversations``; ``data_dir`` unset: Jupyter's user data folder."""
    if data_dir is None:
        from jupyter_core.paths import jupyter_data_dir

        data_dir = jupyter_data_dir()
    return Path(data_dir) / "llamalab" / "conversations"


def check_id(conversation_id: str) -> str:
    if not isinstance(conversation_id, str) or not ID_RE.fullmatch(conversation_id) or conversation_id == "import":
        shown = repr(conversation_id)[:80]
        raise InvalidConversationIdError(
            f"invalid conversation id {shown}: use 1 to 128 letters, digits, '_' or '-', starting with a letter or "
            "digit ('import' is reserved).")
    return conversation_id


def title_from(text: str, limit: int = 48) -> str:
    """A conversation's title from its first message: one line, at most ``limit`` characters."""
    line = " ".join(text.split())
    if not line:
        return UNTITLED
    return line if len(line) <= limit else line[:limit - 1].rstrip() + "…"


def turns_of(entries: Sequence[ConversationEntry]) -> list[ChatTurn]:
    """The model's view of the entries: each answered question (what was sent) and its answer."""
    turns: list[ChatTurn] = []
    question: Optional[ConversationEntry] = None
    for entry in entries:
        if entry.role == "user":
            question = entry
        elif entry.role == "assistant" and entry.content and question is not None:
            turns += [ChatTurn(role="user", content=question.sent if question.sent is not None else question.content),
                      ChatTurn(role="assistant", content=entry.content)]
            question = None
    return turns


def _now_ms() -> float:
    return time.time() * 1000


class ConversationStore:
    def __init__(self, folder: os.PathLike[str] | str, limits: Limits = Limits(),
                 log: Optional[logging.Logger] = None) -> None:
        self.folder = Path(folder)
        self.limits = limits
        self.log = log or logging.getLogger(__name__)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()     # the lock table, and creations against the count cap
        self._epochs: dict[str, int] = {}  # grows when a conversation is replaced, cleared or deleted
        self._running: dict[str, str] = {}  # conversation id -> the chat request answering in it
        self._listeners: list[tuple[Callable[[ConversationChangedMessage], None], asyncio.AbstractEventLoop]] = []

    # -- listeners ------------------------------------------------------------------------
    def add_listener(self, listener: Callable[[ConversationChangedMessage], None]) -> Callable[[], None]:
        """Call from the event loop; ``listener`` is called there for each change."""
        entry = (listener, asyncio.get_running_loop())
        self._listeners.append(entry)
        return lambda: self._listeners.remove(entry) if entry in self._listeners else None

    def _emit(self, conversation_id: str, revision: Optional[int]) -> None:
        message = ConversationChangedMessage(conversation_id=conversation_id, revision=revision,
                                             deleted=revision is None)
        for listener, loop in list(self._listeners):
            if not loop.is_closed():
                loop.call_soon_threadsafe(listener, message)

    # -- files ----------------------------------------------------------------------------
    def path(self, conversation_id: str) -> Path:
        return self.folder / f"{check_id(conversation_id)}.json"

    def _lock(self, conversation_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(conversation_id, threading.Lock())

    def _ids(self) -> Iterator[str]:
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return
        for name in names:
            if name.endswith(".json") and ID_RE.fullmatch(name[:-5]) and name != "import.json":
                yield name[:-5]

    def _read(self, conversation_id: str, problems: Optional[list[ConversationProblem]] = None
              ) -> Optional[StoredConversation]:
        """The conversation, or None when there is no file (or it was unreadable and is now set aside)."""
        path = self.path(conversation_id)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(raw)
            if isinstance(data, dict) and isinstance(data.get("version"), int) and data["version"] > CONVERSATION_VERSION:
                problem = ConversationProblem(file=path.name, message=f"{path.name} was written by a newer llamalab "
                                              f"(format {data['version']}); upgrade llamalab to read it.")
                if problems is not None:
                    problems.append(problem)
                return None
            conversation = StoredConversation.model_validate(data)
            if conversation.id != conversation_id:
                raise ValueError(f"it names the conversation '{conversation.id[:80]}'")
            return conversation
        except (ValueError, UnicodeDecodeError, ValidationError) as exc:
            reason = str(exc).splitlines()[0][:200]
            aside = self._set_aside(path, reason)
            if problems is not None:
                problems.append(ConversationProblem(file=path.name, set_aside_as=aside.name if aside else None,
                                                    message=f"{path.name} could not be read ({reason}); it was "
                                                    f"renamed {aside.name if aside else '(rename failed)'}."))
            return None

    def _set_aside(self, path: Path, reason: str) -> Optional[Path]:
        stamp = time.strftime("%Y%m%dT%H%M%S") + f"-{secrets.token_hex(2)}"
        aside = path.with_name(f"{path.name}{_CORRUPT}{stamp}")
        try:
            os.replace(path, aside)
        except OSError as exc:
            self.log.warning("llamalab: could not set aside the unreadable conversation %s: %s", path, exc)
            return None
        self.log.warning("llamalab: conversation file %s could not be read (%s); renamed %s", path, reason, aside.name)
        return aside

    def _write(self, conversation: StoredConversation) -> StoredConversation:
        data = conversation.model_dump_json().encode()
        if len(data) > self.limits.max_conversation_bytes:
            raise ConversationTooLargeError(
                f"conversation '{conversation.id}' would take {len(data)} bytes, over this server's limit of "
                f"{self.limits.max_conversation_bytes}; delete some of its messages or start a new conversation.")
        if len(conversation.entries) > self.limits.max_entries:
            raise ConversationTooLargeError(
                f"conversation '{conversation.id}' has {len(conversation.entries)} messages, over this server's "
                f"limit of {self.limits.max_entries}; start a new conversation.")
        atomic_write_text(self.path(conversation.id), data.decode())
        self._emit(conversation.id, conversation.revision)
        return conversation

    # -- REST operations (blocking: run them in a thread) ------------------------------------
    def list(self) -> ConversationList:
        problems: list[ConversationProblem] = []
        summaries = []
        for conversation_id in sorted(self._ids()):
            with self._lock(conversation_id):
                conversation = self._read(conversation_id, problems)
            if conversation is not None:
                summaries.append(ConversationSummary(
                    id=conversation.id, name=conversation.name, created=conversation.created,
                    updated=conversation.updated, revision=conversation.revision, messages=len(conversation.entries)))
        reported = {p.set_aside_as for p in problems}
        for name in sorted(os.listdir(self.folder)) if self.folder.is_dir() else ():
            if _CORRUPT in name and name not in reported and not name.startswith("."):
                original = name.split(_CORRUPT, 1)[0]
                problems.append(ConversationProblem(file=original, set_aside_as=name, message=(
                    f"{original} could not be read and was renamed {name}; repair it and rename it back, or delete it.")))
        summaries.sort(key=lambda s: s.updated, reverse=True)
        return ConversationList(conversations=summaries, problems=problems, folder=str(self.folder),
                                max_conversations=self.limits.max_conversations,
                                max_conversation_bytes=self.limits.max_conversation_bytes)

    def get(self, conversation_id: str) -> StoredConversation:
        with self._lock(check_id(conversation_id)):
            problems: list[ConversationProblem] = []
            conversation = self._read(conversation_id, problems)
        if conversation is None:
            if problems:
                raise ConversationNotFoundError(problems[0].message)
            raise ConversationNotFoundError(f"no conversation '{conversation_id}'; GET /llamalab/conversations lists them.")
        return conversation

    def create(self, request: ConversationCreate) -> StoredConversation:
        conversation_id = check_id(request.id) if request.id is not None else f"c-{secrets.token_hex(12)}"
        now = _now_ms()
        conversation = StoredConversation(
            id=conversation_id, name=request.name.strip() or UNTITLED, system=request.system,
            created=request.created or now, updated=request.updated or request.created or now, revision=1,
            entries=request.entries)
        with self._guard:
            if self.path(conversation_id).exists():
                raise ConflictError(f"a conversation '{conversation_id}' exists already; choose another id.")
            count = sum(1 for _ in self._ids())
            if count >= self.limits.max_conversations:
                raise ConversationTooLargeError(
                    f"this server keeps at most {self.limits.max_conversations} conversations; delete some first.")
            lock = self._locks.setdefault(conversation_id, threading.Lock())
        with lock:
            return self._write(conversation)

    def replace(self, conversation_id: str, update: ConversationUpdate) -> StoredConversation:
        with self._lock(check_id(conversation_id)):
            current = self._current(conversation_id, update.revision)
            self._epochs[conversation_id] = self._epochs.get(conversation_id, 0) + 1
            return self._write(current.model_copy(update=dict(
                name=update.name.strip() or UNTITLED, system=update.system, entries=update.entries,
                updated=_now_ms(), revision=current.revision + 1)))

    def patch(self, conversation_id: str, patch: ConversationPatch) -> StoredConversation:
        with self._lock(check_id(conversation_id)):
            current = self._current(conversation_id, patch.revision)
            change: dict[str, Any] = {"updated": _now_ms(), "revision": current.revision + 1}
            if patch.name is not None:
                change["name"] = " ".join(patch.name.split())[:500] or UNTITLED
            if patch.clear_system:
                change["system"] = None
            elif patch.system is not None:
                change["system"] = patch.system
            return self._write(current.model_copy(update=change))

    def delete(self, conversation_id: str) -> None:
        with self._lock(check_id(conversation_id)):
            try:
                os.unlink(self.path(conversation_id))
            except FileNotFoundError:
                raise ConversationNotFoundError(f"no conversation '{conversation_id}' to delete.") from None
            self._epochs[conversation_id] = self._epochs.get(conversation_id, 0) + 1
        _fsync_dir(self.folder)
        self._emit(conversation_id, None)

    def import_(self, request: ConversationImport) -> ImportReply:
        imported, skipped = [], []
        for item in request.conversations:
            try:
                if item.id is None:
                    raise InvalidConversationIdError("an imported conversation needs its id.")
                imported.append(self.create(item).id)
            except ConflictError:
                skipped.append(ImportSkip(id=item.id, reason="the server has a conversation with this id already"))
            except ConversationError as exc:
                skipped.append(ImportSkip(id=item.id, reason=str(exc)))
        return ImportReply(imported=imported, skipped=skipped)

    def _current(self, conversation_id: str, revision: Optional[int]) -> StoredConversation:
        current = self._read(conversation_id)
        if current is None:
            raise ConversationNotFoundError(f"no conversation '{conversation_id}'; it may have been deleted in another tab.")
        if revision is not None and revision != current.revision:
            raise ConflictError(f"conversation '{conversation_id}' changed (revision {current.revision}, you had "
                                f"{revision}), perhaps in another tab; read it again and retry.")
        return current

    # -- the chat WebSocket's side ---------------------------------------------------------------
    def epoch(self, conversation_id: str) -> int:
        return self._epochs.get(conversation_id, 0)

    def claim(self, conversation_id: str, request_id: str) -> Optional[str]:
        """Marks ``request_id`` as answering in the conversation; returns the one already doing so, if any."""
        holder = self._running.get(conversation_id)
        if holder is None:
            self._running[conversation_id] = request_id
        return holder

    def release(self, conversation_id: str, request_id: str) -> None:
        if self._running.get(conversation_id) == request_id:
            del self._running[conversation_id]

    def open_for_chat(self, conversation_id: str, system: Optional[str]) -> StoredConversation:
        """The conversation a chat request names, made (empty) when new; ``system``, when given, is stored."""
        with self._lock(check_id(conversation_id)):
            current = self._read(conversation_id)
        if current is None:
            try:
                return self.create(ConversationCreate(id=conversation_id, system=system))
            except ConflictError:  # made meanwhile by another tab
                pass
        if system is not None and (current is None or current.system != system):
            return self.patch(conversation_id, ConversationPatch(system=system))
        return current if current is not None else self.get(conversation_id)

    def append(self, conversation_id: str, entries: Sequence[ConversationEntry], epoch: int,
               seed: Sequence[ConversationEntry] = ()) -> Optional[StoredConversation]:
        """Appends a finished turn; ``seed`` (earlier turns a client brought) goes first while the conversation
        is empty. Nothing is written when the conversation was cleared or deleted since ``epoch``. The oldest
        entries give way when the conversation would be over the caps."""
        with self._lock(check_id(conversation_id)):
            current = self._read(conversation_id)
            if current is None or self.epoch(conversation_id) != epoch:
                return None
            old = list(current.entries) if current.entries else list(seed)
            title = current.name
            if title == UNTITLED and not any(e.role == "user" for e in old):
                first = next((e for e in [*old, *entries] if e.role == "user"), None)
                title = title_from(first.content) if first else title
            kept = [*old, *entries][-self.limits.max_entries:]
            while True:
                candidate = current.model_copy(update=dict(entries=kept, name=title, updated=_now_ms(),
                                                           revision=current.revision + 1))
                if len(kept) <= len(entries) or \
                        len(candidate.model_dump_json()) <= self.limits.max_conversation_bytes:
                    break
                kept = kept[2:]
            return self._write(candidate)

    def clear(self, conversation_id: str) -> None:
        """Forgets a conversation's messages (the chat WebSocket's ``reset``); unknown ones are left alone."""
        with self._lock(check_id(conversation_id)):
            self._epochs[conversation_id] = self._epochs.get(conversation_id, 0) + 1
            current = self._read(conversation_id)
            if current is not None and current.entries:
                self._write(current.model_copy(update=dict(entries=[], name=UNTITLED, updated=_now_ms(),
                                                           revision=current.revision + 1)))

    def read_if_exists(self, conversation_id: str) -> Optional[StoredConversation]:
        with self._lock(check_id(conversation_id)):
            return self._read(conversation_id)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
