"""``KernelContextReader``: the names a notebook's live kernel defines, read for prompts.

The Jupyter server's kernel manager holds every kernel JupyterLab started. For a prompt (the
chat's "Kernel" context, inline completions), the reader asks such a kernel for its names with
a silent ``execute_request``: empty code, ``silent=True``, ``store_history=False`` and one
``user_expressions`` entry that runs ``llamalab.kernel_names`` inside the kernel (standard
library only, so a kernel without llamalab answers too). Nothing reaches the notebook's
outputs, its history or its execution count.

It reads only from a kernel that exists, is alive, runs Python (its kernel spec says so) and
is ``idle``; a busy, dead, unknown or non-Python kernel gives the last entries read (or
``[]``) at once. The caller never waits more than ``wait_s``: a read that takes longer goes on
in the background and its answer is kept for the next call. Entries are kept per kernel for
one execution count (the caller's notebook count: when it changes, the kernel is read again),
for a bounded number of kernels. The reply is bounded in size before it is parsed, the
channels are closed after each read, and nothing is raised to the caller: problems go to the
log at debug level.

    reader = KernelContextReader(serverapp.kernel_manager, log)
    entries = await reader.entries(kernel_id, execution_count)      # list[dict], maybe []
    block = await reader.block(kernel_id, execution_count, near=text_before_cursor)
"""

from __future__ import annotations

import ast
import asyncio
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, MutableMapping, Optional

from jupyter_core.utils import ensure_async

from llamalab import kernel_names

__all__ = ["SETTINGS_KEY", "KernelContextReader", "reader_for"]

SETTINGS_KEY = "llamalab_kernel_context"  # where the server's one reader lives in the tornado settings
EXPRESSION_NAME = "llamalab"
MAX_ENTRIES = 500  # entries accepted from one reply


@dataclass
class _Cached:
    execution_count: int
    entries: list[dict]


class KernelContextReader:
    """Reads the names defined in kernels of a Jupyter server's kernel manager (see the module)."""

    def __init__(self, kernel_manager: Any, log: Optional[logging.Logger] = None, *, max_kernels: int = 32,
                 max_reply_chars: int = 256 * 1024, read_timeout_s: float = 30.0) -> None:
        self._kernels = kernel_manager
        self._log = log or logging.getLogger(__name__)
        self._max_kernels = max(1, max_kernels)
        self._max_reply_chars = max_reply_chars
        self._read_timeout_s = read_timeout_s
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._reads: dict[str, asyncio.Task[list[dict]]] = {}

    async def entries(self, kernel_id: str, execution_count: int, *, wait_s: float = 0.5) -> list[dict]:
        """The kernel's entries (``llamalab.kernel_names.describe_namespace``) as of
        ``execution_count``; ``[]`` or the last ones read when the kernel cannot be read now."""
        try:
            return await self._entries(kernel_id, execution_count, wait_s)
        except Exception as exc:  # never in the caller's way
            self._log.debug("llamalab: reading kernel %s's names failed: %r", kernel_id, exc)
            cached = self._cache.get(kernel_id)
            return cached.entries if cached else []

    async def block(self, kernel_id: str, execution_count: int, *, near: str = "", max_chars: int = 1200,
                    comment: str = "#", wait_s: float = 0.5) -> str:
        """The entries as a prompt's comment block (``format_names``); "" when there are none."""
        entries = await self.entries(kernel_id, execution_count, wait_s=wait_s)
        return kernel_names.format_names(entries, near=near, max_chars=max_chars, comment=comment)

    def forget(self, kernel_id: str) -> None:
        """Drop what is known of a kernel (and stop a read of it still running)."""
        self._cache.pop(kernel_id, None)
        task = self._reads.pop(kernel_id, None)
        if task is not None:
            task.cancel()

    # -- internals --------------------------------------------------------------------------
    async def _entries(self, kernel_id: str, execution_count: int, wait_s: float) -> list[dict]:
        if kernel_id not in self._kernels:  # unknown, or shut down since it was read
            self.forget(kernel_id)
            return []
        cached = self._cache.get(kernel_id)
        if cached is not None:
            self._cache.move_to_end(kernel_id)
            if cached.execution_count == execution_count:
                return cached.entries
        last = cached.entries if cached else []
        task = self._reads.get(kernel_id)
        if task is None:
            kernel = await self._readable(kernel_id)
            if kernel is None:
                return self._cache[kernel_id].entries if kernel_id in self._cache else []
            task = asyncio.ensure_future(self._read(kernel_id, kernel, execution_count, last))
            self._reads[kernel_id] = task
            task.add_done_callback(lambda done: self._reads.pop(kernel_id, None) if self._reads.get(kernel_id) is done
                                   else None)
        try:
            return await asyncio.wait_for(asyncio.shield(task), max(0.0, wait_s))
        except asyncio.TimeoutError:
            return last  # the read goes on; its answer is cached for the next call
        except asyncio.CancelledError:
            if task.cancelled():  # the kernel was forgotten while it was read
                return []
            raise

    async def _readable(self, kernel_id: str) -> Optional[Any]:
        """The kernel's manager when it can be read now, else None (forgetting a kernel that died)."""
        kernel = self._kernels.get_kernel(kernel_id)
        state = getattr(kernel, "execution_state", None)
        if state == "dead" or not await ensure_async(kernel.is_alive()):
            self.forget(kernel_id)
            return None
        spec = kernel.kernel_spec
        if spec is None or str(getattr(spec, "language", "")).lower() != "python":
            return None
        if state != "idle":
            self._log.debug("llamalab: kernel %s is %s; its names are not read now", kernel_id, state)
            return None
        return kernel

    async def _read(self, kernel_id: str, kernel: Any, execution_count: int, last: list[dict]) -> list[dict]:
        """One silent request, its answer cached (a failed read keeps ``last`` for this count)."""
        entries = last
        client = None
        try:
            client = kernel.client(session=_own_session(kernel.session))
            client.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=False)
            msg_id = client.execute("", silent=True, store_history=False, allow_stdin=False,
                                    user_expressions={EXPRESSION_NAME: kernel_names.kernel_expression()})
            reply = await asyncio.wait_for(self._reply(client, msg_id), self._read_timeout_s)
            entries = self._parse(reply)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._log.debug("llamalab: no names from kernel %s: %r", kernel_id, exc)
        finally:
            if client is not None:
                try:
                    client.stop_channels()
                except Exception as exc:
                    self._log.debug("llamalab: closing kernel %s's channels: %r", kernel_id, exc)
        self._store(kernel_id, _Cached(execution_count, entries))
        return entries

    @staticmethod
    async def _reply(client: Any, msg_id: str) -> dict:
        while True:
            message = await client.get_shell_msg(timeout=None)
            if message.get("parent_header", {}).get("msg_id") == msg_id:
                return message

    def _parse(self, reply: dict) -> list[dict]:
        content = reply.get("content", {})
        result = content.get("user_expressions", {}).get(EXPRESSION_NAME, {})
        if result.get("status") != "ok":
            raise ValueError(f"the kernel answered {result.get('ename', content.get('status'))}: "
                             f"{result.get('evalue', '')}")
        text = result.get("data", {}).get("text/plain", "")
        if not isinstance(text, str) or len(text) > self._max_reply_chars:
            raise ValueError(f"the reply is {len(text)} characters, over {self._max_reply_chars}")
        data = json.loads(ast.literal_eval(text))  # the expression's value is a str: its repr came back
        if not isinstance(data, list):
            raise ValueError("the reply is not a list")
        return [e for e in data[-MAX_ENTRIES:]
                if isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get("text"), str)]

    def _store(self, kernel_id: str, cached: _Cached) -> None:
        if kernel_id not in self._kernels:  # shut down while it was read
            self._cache.pop(kernel_id, None)
            return
        self._cache[kernel_id] = cached
        self._cache.move_to_end(kernel_id)
        while len(self._cache) > self._max_kernels:
            self._cache.popitem(last=False)


def _own_session(shared: Any) -> Any:
    """A session of our own with the kernel's key: a client sharing the kernel manager's session
    (and so its session id) with another client of the same kernel leaves that other client
    waiting for its output forever (seen with ipykernel 7)."""
    from jupyter_client.session import Session

    return Session(config=shared.config, key=shared.key, signature_scheme=shared.signature_scheme,
                   username="llamalab")


def reader_for(settings: MutableMapping[str, Any], kernel_manager: Any,
               log: Optional[logging.Logger] = None) -> KernelContextReader:
    """The server's one reader, kept in the tornado ``settings`` (made on first use)."""
    reader = settings.get(SETTINGS_KEY)
    if reader is None:
        reader = settings[SETTINGS_KEY] = KernelContextReader(kernel_manager, log)
    return reader
