"""``AsyncEngine``: any Engine, usable from asyncio code (tornado handlers, pygls).

Each stream runs its blocking ``TokenStream`` on a helper thread and hands pieces to the
event loop with ``call_soon_threadsafe``, so the loop never blocks on llama.cpp. Leaving
an ``async for`` early, cancelling the consuming task, or calling ``cancel()`` cancels
the generation underneath.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, Optional, Sequence

from ..templates import Message
from .base import Engine, GenerationParams, GenerationResult, ModelDescription, TokenStream

__all__ = ["AsyncEngine", "AsyncTokenStream"]

_END = object()


class AsyncTokenStream:
    """``async for piece in stream`` yields text; ``result`` is set when it ends."""

    def __init__(self, start: Callable[[], TokenStream]) -> None:
        self._start = start
        self._queue: Optional[asyncio.Queue[Any]] = None
        self._stream: Optional[TokenStream] = None
        self._cancelled = threading.Event()
        self._ready = threading.Event()
        self._ended = threading.Event()
        self.result: Optional[GenerationResult] = None

    def _run(self, loop: asyncio.AbstractEventLoop, out: "asyncio.Queue[Any]") -> None:
        def put(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(out.put_nowait, item)
            except RuntimeError:  # the loop closed under us: nobody is listening any more
                self.cancel()

        try:
            self._stream = self._start()
            self._ready.set()
            if self._cancelled.is_set():
                self._stream.cancel()
            for piece in self._stream:
                put(piece)
            put((_END, self._stream.result))
        except BaseException as exc:  # delivered to the awaiting task
            put((_END, exc))
        finally:
            self._ready.set()
            self._ended.set()

    def __aiter__(self) -> "AsyncTokenStream":
        return self

    async def __anext__(self) -> str:
        if self.result is not None:
            raise StopAsyncIteration
        if self._queue is None:
            self._queue = asyncio.Queue()
            threading.Thread(target=self._run, args=(asyncio.get_running_loop(), self._queue),
                             name="llamalab-async-stream", daemon=True).start()
        try:
            item = await self._queue.get()
        except asyncio.CancelledError:
            self.cancel()
            raise
        if isinstance(item, tuple) and len(item) == 2 and item[0] is _END:
            if isinstance(item[1], BaseException):
                raise item[1]
            self.result = item[1]
            raise StopAsyncIteration
        return item

    async def collect(self) -> GenerationResult:
        async for _ in self:
            pass
        assert self.result is not None
        return self.result

    def wait_ended(self, timeout: Optional[float] = None) -> Optional[GenerationResult]:
        """From any thread (not the event loop): wait until the generation underneath has ended,
        also after its reader went away (a cancelled task), and return its result (None if it
        has not ended within ``timeout`` or ended with an error)."""
        if not self._ended.wait(timeout):
            return None
        return self._stream.result if self._stream is not None else None

    def cancel(self) -> None:
        self._cancelled.set()
        if self._stream is not None:
            self._stream.cancel()

    async def aclose(self) -> None:
        if self.result is None:
            self.cancel()


class AsyncEngine:
    """Wraps an ``Engine`` for asyncio callers; the engine may still be used directly."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def complete(self, prompt: str, params: Optional[GenerationParams] = None) -> AsyncTokenStream:
        return AsyncTokenStream(lambda: self.engine.complete(prompt, params))

    def chat(self, messages: Sequence[Message | dict], params: Optional[GenerationParams] = None) -> AsyncTokenStream:
        return AsyncTokenStream(lambda: self.engine.chat(messages, params))

    async def tokenize(self, text: str, *, add_bos: bool = False, special: bool = False) -> list[int]:
        return await asyncio.to_thread(self.engine.tokenize, text, add_bos=add_bos, special=special)

    async def count_tokens(self, text: str) -> int:
        return await asyncio.to_thread(self.engine.count_tokens, text)

    async def describe(self) -> ModelDescription:
        return await asyncio.to_thread(self.engine.describe)

    def cancel(self) -> None:
        self.engine.cancel()
