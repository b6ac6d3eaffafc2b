"""``--stream-timeout``: a client that stops reading its stream is let go and its generation
cancelled, so its slot serves others.

Through a real socket this cannot be provoked here: on loopback the kernel keeps growing the
server's send buffer (over 300 kB after 24 s of a stalled client with a 4 kB receive buffer, and
up to 4 MB), more than any answer of the demo model, so the server's writes never back up. The
handler's streaming loop is therefore driven directly, with a flush that never completes: what a
client with a shut receive window looks like to tornado.
"""

from __future__ import annotations

import asyncio
import logging
import types

from llamalab.extension.openai import OpenAIRoutes, _Request


class _EndlessGeneration:
    """Yields pieces until cancelled; records what the handler did to it."""

    model = "demo"

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.closed = False
        self.pieces = 0

    def __aiter__(self) -> "_EndlessGeneration":
        return self

    async def __anext__(self) -> str:
        if self.cancelled.is_set():
            raise StopAsyncIteration
        self.pieces += 1
        await asyncio.sleep(0)
        return " 1,"

    def cancel(self) -> None:
        self.cancelled.set()

    async def aclose(self) -> None:
        self.closed = True


class _StalledClient(OpenAIRoutes):
    """The streaming half of a handler whose client never reads: every flush stays pending."""

    stream_write_timeout_s = 0.3

    def __init__(self) -> None:
        self.connection_closed = False
        self.chunks: list[str] = []
        self.headers: dict[str, str] = {}
        self.request = types.SimpleNamespace(remote_ip="10.1.2.3", connection=types.SimpleNamespace(
            close=lambda: setattr(self, "connection_closed", True)))
        self.log = logging.getLogger("test_stream_timeout")

    def set_header(self, name: str, value: str) -> None:
        self.headers[name] = value

    def write(self, chunk: str) -> None:
        self.chunks.append(chunk)

    def flush(self) -> "asyncio.Future[None]":
        return asyncio.get_running_loop().create_future()  # never done: the client's window is shut

    def finish(self, *args: object) -> None:
        raise AssertionError("a stream whose client stopped reading must not be finished as if answered")


def test_a_stream_whose_client_stops_reading_is_ended_and_its_generation_cancelled(caplog):
    handler, generation = _StalledClient(), _EndlessGeneration()
    request = _Request(prompt="1, 2, 3,", stream=True)

    async def stream() -> None:
        await asyncio.wait_for(handler.run(generation, request, "text_completion", lambda piece: {
            "choices": [{"text": piece}]}, lambda result: {}, lambda result: {}), timeout=30)

    with caplog.at_level(logging.INFO, logger="test_stream_timeout"):
        asyncio.run(stream())
    assert generation.cancelled.is_set() and generation.closed  # the slot is free for others
    assert handler.connection_closed
    assert len(handler.chunks) == 1  # nothing more was written after the first event backed up
    assert "10.1.2.3 stopped reading its stream for 0.3 s" in caplog.text
