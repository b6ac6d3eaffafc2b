"""The language server end to end: ``python -m llamalab.lsp`` as a subprocess over stdio, driven
by a small JSON-RPC client the way an editor drives it, against the real demo model."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from typing import Any, Optional

import pytest

pytest.importorskip("pygls")

DOC_URI = "file:///tmp/example.py"
DOC = "def add(a, b):\n    \"\"\"Return the sum of a and b.\"\"\"\n    return a + \n\n\nprint(add(1, 2))\n"
CURSOR = {"line": 2, "character": len("    return a + ")}
BLANK_DOC = "import os\n\n\ndef list_python_files(folder):\n    \n"
BLANK_CURSOR = {"line": 4, "character": 4}


class Client:
    """JSON-RPC 2.0 over the server's stdin/stdout, with LSP's Content-Length framing."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.next_id = 0
        self.responses: dict[Any, "queue.Queue[dict]"] = {}
        self.lock = threading.Lock()
        self.orphans: "queue.Queue[dict]" = queue.Queue()  # responses with id null
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        out = self.proc.stdout
        while True:
            headers = {}
            while True:
                line = out.readline()
                if not line:
                    return
                line = line.strip()
                if not line:
                    break
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            message = json.loads(out.read(int(headers["content-length"])))
            if "id" in message and "method" not in message:
                if message["id"] is None:
                    self.orphans.put(message)
                else:
                    self._box(message["id"]).put(message)

    def _box(self, request_id: Any) -> "queue.Queue[dict]":
        with self.lock:
            return self.responses.setdefault(request_id, queue.Queue())

    def send_raw(self, body: bytes) -> None:
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.proc.stdin.flush()

    def send(self, message: dict) -> None:
        self.send_raw(json.dumps({"jsonrpc": "2.0", **message}).encode())

    def request(self, method: str, params: Any = None) -> int:
        self.next_id += 1
        self.send({"id": self.next_id, "method": method, "params": params})
        return self.next_id

    def wait(self, request_id: int, timeout: float = 60) -> dict:
        return self._box(request_id).get(timeout=timeout)

    def call(self, method: str, params: Any = None, timeout: float = 60) -> dict:
        return self.wait(self.request(method, params), timeout)

    def notify(self, method: str, params: Any) -> None:
        self.send({"method": method, "params": params})


@pytest.fixture(scope="module")
def client(demo_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("lsp") / "server.log"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "llamalab.lsp"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=stderr)
    c = Client(proc)
    reply = c.call("initialize", {
        "processId": None, "rootUri": None, "capabilities": {},
        "initializationOptions": {"model": str(demo_model), "maxTokens": 24, "debounceMs": 0, "nCtx": 1024},
    })
    c.capabilities = reply["result"]["capabilities"]
    c.notify("initialized", {})
    c.notify("textDocument/didOpen", {"textDocument": {"uri": DOC_URI, "languageId": "python",
                                                       "version": 1, "text": DOC}})
    yield c
    try:
        c.call("shutdown", None, timeout=10)
        c.notify("exit", None)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        print(log.read_text())


def inline(client: Client, cursor: dict, uri: str = DOC_URI) -> int:
    return client.request("textDocument/inlineCompletion", {
        "textDocument": {"uri": uri}, "position": cursor, "context": {"triggerKind": 2}})


def test_capabilities(client):
    caps = client.capabilities
    assert caps["inlineCompletionProvider"] is not None  # {} or true: supported
    assert caps["completionProvider"] is not None
    assert caps["textDocumentSync"]


def test_inline_completion_is_one_clean_line(client):
    reply = client.wait(inline(client, CURSOR))
    items = reply["result"]["items"]
    assert items, reply
    text = items[0]["insertText"]
    assert text.strip() and "\n" not in text and text == text.rstrip()
    assert items[0]["range"]["start"] == CURSOR


def test_completion_returns_an_item(client):
    reply = client.call("textDocument/completion", {"textDocument": {"uri": DOC_URI}, "position": CURSOR})
    items = reply["result"]["items"]
    assert items, reply
    assert items[0]["textEdit"]["newText"].strip() and "\n" not in items[0]["textEdit"]["newText"]


def test_multi_line_completion_stays_in_its_block(client):
    uri = "file:///tmp/blank.py"
    client.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python",
                                                           "version": 1, "text": BLANK_DOC}})
    reply = client.wait(inline(client, BLANK_CURSOR, uri))
    for item in reply["result"]["items"]:
        for line in item["insertText"].split("\n")[1:]:
            assert not line.strip() or line.startswith("    "), item  # never leaves the function


def test_a_newer_request_supersedes_the_older(client):
    client.notify("workspace/didChangeConfiguration", {"settings": {"llamalab": {"maxTokens": 200}}})
    try:
        first = inline(client, BLANK_CURSOR, "file:///tmp/blank.py")
        time.sleep(0.05)
        started = time.monotonic()
        second = inline(client, BLANK_CURSOR, "file:///tmp/blank.py")
        old = client.wait(first, timeout=30)
        assert time.monotonic() - started < 5
        assert old.get("result", {}).get("items", []) == [] or old["error"]["code"] == -32800
        assert "result" in client.wait(second, timeout=60)
    finally:
        client.notify("workspace/didChangeConfiguration", {"settings": {"llamalab": {"maxTokens": 24}}})


def test_cancel_request_answers_quickly(client):
    request = inline(client, BLANK_CURSOR, "file:///tmp/blank.py")
    client.notify("$/cancelRequest", {"id": request})
    reply = client.wait(request, timeout=30)
    assert "error" in reply and reply["error"]["code"] == -32800 or reply["result"]["items"] == [] \
        or reply["result"]["items"]  # answered: cancelled, or finished before the cancel arrived


def test_bad_messages_get_errors_and_the_server_stays_up(client):
    unknown = client.call("llamalab/noSuchMethod", {}, timeout=10)
    assert unknown["error"]["code"] == -32601
    client.send_raw(b"{this is not json")
    unopened = client.call("textDocument/inlineCompletion", {
        "textDocument": {"uri": "file:///tmp/never-opened.py"}, "position": {"line": 0, "character": 0},
        "context": {"triggerKind": 1}}, timeout=30)
    assert "result" in unopened or "error" in unopened
    reply = client.wait(inline(client, CURSOR))
    assert reply["result"]["items"]
    assert client.proc.poll() is None
