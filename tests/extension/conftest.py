"""Fixtures for the Jupyter extension: a real jupyter_server (pytest-jupyter) running
llamalab with the demo model, and helpers to speak REST, WebSocket and SSE to it.

pytest-jupyter's fixtures are imported here rather than registered as a plugin, so they
(and its autouse event loop) apply to this folder only.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Callable, Optional

import pytest

pytest.importorskip("jupyter_server")

from pytest_jupyter.jupyter_server import *  # noqa: E402,F401,F403 - jp_serverapp, jp_fetch, jp_ws_fetch, ...
from tornado.httpclient import HTTPClientError  # noqa: E402
from traitlets.config import Config  # noqa: E402

from tests.conftest import TEST_HOME  # noqa: E402


@pytest.fixture
def llamalab_config(demo_model) -> dict[str, Any]:
    """The extension's traitlets for a test (override this fixture to change them)."""
    return {"store_dir": str(TEST_HOME), "n_ctx": 1024, "default_max_tokens": 24}


@pytest.fixture
def jp_server_config(llamalab_config):
    return Config({
        "ServerApp": {"jpserver_extensions": {"llamalab.extension": True, "jupyter_server_terminals": False}},
        "LlamalabExtension": llamalab_config,
    })


@pytest.fixture
def extension(jp_serverapp):
    """The running ``LlamalabExtension``."""
    return jp_serverapp.web_app.settings["llamalab"]


@pytest.fixture
def token(jp_serverapp) -> str:
    return jp_serverapp.identity_provider.token


@pytest.fixture
def server_root(jp_serverapp, http_server, jp_http_port, jp_base_url) -> str:
    """The extension's root URL, as RemoteEngine and kernels reach it (the server listening)."""
    return f"http://127.0.0.1:{jp_http_port}{jp_base_url}llamalab"


@pytest.fixture
def fetch_json(jp_fetch):
    """``await fetch_json(method, path, body)`` -> (status, parsed JSON), errors included."""

    async def call(method: str, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]:
        raw = body if isinstance(body, (str, bytes)) or body is None else json.dumps(body)
        if raw is None and method in ("POST", "PATCH", "PUT"):
            raw = ""
        try:
            response = await jp_fetch(*path.strip("/").split("/"), method=method, body=raw, **kwargs)
        except HTTPClientError as exc:
            assert exc.response is not None, exc
            return exc.code, json.loads(exc.response.body or b"null")
        return response.code, json.loads(response.body or b"null")

    return call


class Socket:
    """A chat WebSocket client that keeps every message it receives."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.received: list[dict[str, Any]] = []

    async def send(self, message: Any) -> None:
        if isinstance(message, bytes):  # a binary frame
            await self.conn.write_message(message, binary=True)
        else:
            await self.conn.write_message(message if isinstance(message, str) else json.dumps(message))

    async def next(self, timeout: float = 30.0) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.conn.read_message(), timeout)
        assert raw is not None, "the server closed the WebSocket"
        message = json.loads(raw)
        self.received.append(message)
        return message

    async def until(self, done: Callable[[dict[str, Any]], bool], timeout: float = 60.0) -> list[dict[str, Any]]:
        """Messages up to and including the first one ``done`` accepts."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            message = await self.next(max(0.1, deadline - time.monotonic()))
            seen.append(message)
            if done(message):
                return seen

    async def reply_to(self, request_id: str, kinds: tuple[str, ...] = ("done", "error", "ack", "history"),
                       timeout: float = 60.0) -> dict[str, Any]:
        seen = await self.until(lambda m: m.get("id") == request_id and m["type"] in kinds, timeout)
        return seen[-1]

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def open_chat(jp_ws_fetch):
    """``await open_chat()`` -> a ``Socket`` past its hello message."""
    sockets: list[Socket] = []

    async def connect(**kwargs: Any) -> Socket:
        socket = Socket(await jp_ws_fetch("llamalab", "chat", **kwargs))
        hello = await socket.next()
        assert hello["type"] == "hello"
        sockets.append(socket)
        return socket

    yield connect
    for socket in sockets:
        socket.close()


def tokens_of(messages: list[dict[str, Any]], request_id: Optional[str] = None) -> str:
    return "".join(m["text"] for m in messages if m["type"] == "token" and (request_id is None or m["id"] == request_id))
