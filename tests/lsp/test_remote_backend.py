"""The language server on a remote backend (``remoteUrl``): llama-cpp-python's own
OpenAI-compatible server on the demo model stands in for a llama-server, vLLM or the Jupyter
extension's route. The server's prompt is text there, cut by the same anchored window."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("pygls")
pytest.importorskip("httpx")
for _module in ("fastapi", "uvicorn", "sse_starlette"):
    pytest.importorskip(_module, reason="llama-cpp-python's server needs llama-cpp-python[server]")

from tests.core.test_engine_remote import Server  # noqa: E402
from tests.lsp.test_server_e2e import CURSOR, DOC, DOC_URI, Client, inline  # noqa: E402


@pytest.fixture(scope="module")
def remote_client(demo_model, tmp_path_factory):
    backend = Server(demo_model, tmp_path_factory.mktemp("llama-server") / "server.log", n_ctx=1024)
    proc = subprocess.Popen([sys.executable, "-m", "llamalab.lsp"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    client = Client(proc)
    try:
        client.call("initialize", {"processId": None, "rootUri": None, "capabilities": {}, "initializationOptions": {
            "remoteUrl": f"{backend.url}/v1", "maxTokens": 12, "debounceMs": 0, "prefixTokens": 64}})
        client.notify("initialized", {})
        client.notify("textDocument/didOpen", {"textDocument": {"uri": DOC_URI, "languageId": "python",
                                                               "version": 1, "text": DOC}})
        yield client
    finally:
        proc.kill()
        backend.stop()


def test_inline_completion_through_a_remote_server(remote_client):
    reply = remote_client.wait(inline(remote_client, CURSOR), timeout=120)
    items = reply["result"]["items"]
    assert items, reply
    assert items[0]["insertText"].strip() and "\n" not in items[0]["insertText"]


def test_the_remote_prompt_is_the_text_window(remote_client):
    info = remote_client.call("llamalab/prompt", {"textDocument": {"uri": DOC_URI}, "position": CURSOR},
                              timeout=60)["result"]
    assert info["text"] == DOC[:DOC.index("return a + ") + len("return a + ")]  # short: the whole prefix
    assert "tokens" not in info and info["mode"] == "single"
