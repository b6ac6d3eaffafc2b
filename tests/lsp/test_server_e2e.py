"""The language server at the wire: ``python -m llamalab.lsp`` as a subprocess over stdio, driven
by a small hand-written JSON-RPC client that can send what no well-behaved client library would
(bodies that are not JSON, wrong ``jsonrpc`` versions, params of the wrong shape), against the
real demo model. Every request gets exactly one reply, and the server stays up.

The LSP features themselves are tested through pytest-lsp in ``test_lsp_features.py``."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

pytest.importorskip("pygls")

DOC_URI = "file:///tmp/example.py"
DOC = "def add(a, b):\n    \"\"\"Return the sum of a and b.\"\"\"\n    return a + \n\n\nprint(add(1, 2))\n"
CURSOR = {"line": 2, "character": len("    return a + ")}


class Client:
    """JSON-RPC 2.0 over the server's stdin/stdout, with LSP's Content-Length framing."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.next_id = 0
        self.responses: dict[Any, "queue.Queue[dict]"] = {}
        self.lock = threading.Lock()
        self.orphans: "queue.Queue[dict]" = queue.Queue()  # responses with id null
        self.notifications: "queue.Queue[dict]" = queue.Queue()
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
            elif "id" not in message:
                self.notifications.put(message)

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

    def wait(self, request_id: Any, timeout: float = 60) -> dict:
        return self._box(request_id).get(timeout=timeout)

    def call(self, method: str, params: Any = None, timeout: float = 60) -> dict:
        return self.wait(self.request(method, params), timeout)

    def notify(self, method: str, params: Any) -> None:
        self.send({"method": method, "params": params})

    def replies_to(self, request_id: Any) -> int:
        return self._box(request_id).qsize()


@pytest.fixture(scope="module")
def client(demo_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("lsp") / "server.log"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "llamalab.lsp"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=stderr)
    c = Client(proc)
    c.call("initialize", {
        "processId": None, "rootUri": None, "capabilities": {},
        "initializationOptions": {"model": str(demo_model), "maxTokens": 8, "debounceMs": 0, "nCtx": 1024,
                                  "prefixTokens": 256, "suffixTokens": 64, "contextTokens": 0, "nCtxx": 2},
    })
    c.init_warning = c.notifications.get(timeout=10)
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
        print(log.read_text()[-20000:])


def inline(client: Client, cursor: dict, uri: str = DOC_URI) -> int:
    return client.request("textDocument/inlineCompletion", {
        "textDocument": {"uri": uri}, "position": cursor, "context": {"triggerKind": 2}})


def assert_still_serving(client: Client) -> None:
    reply = client.wait(inline(client, CURSOR))
    assert reply["result"]["items"], reply
    assert client.proc.poll() is None


def test_an_unknown_initialization_option_is_shown_not_fatal(client):
    assert client.init_warning["method"] == "window/showMessage"
    assert client.init_warning["params"]["type"] == 2  # Warning
    assert "'nCtxx'" in client.init_warning["params"]["message"]
    assert "nCtx" in client.init_warning["params"]["message"]  # the known settings are listed
    assert_still_serving(client)


def test_a_body_that_is_not_json_gets_a_parse_error(client):
    client.send_raw(b"{this is not json")
    error = client.orphans.get(timeout=10)["error"]
    assert error["code"] == -32700 and "not valid UTF-8 JSON" in error["message"]
    client.send_raw(b'{"jsonrpc": "2.0", "id": 99, "method": "\xff\xfe"}')
    assert client.orphans.get(timeout=10)["error"]["code"] == -32700
    assert_still_serving(client)


def test_json_that_is_not_a_request_gets_invalid_request(client):
    client.send_raw(b"[1, 2, 3]")
    assert client.orphans.get(timeout=10)["error"]["code"] == -32600
    client.send_raw(json.dumps({"id": 501, "method": "textDocument/completion"}).encode())  # no "jsonrpc"
    assert client.wait(501, timeout=10)["error"]["code"] == -32600
    client.send_raw(json.dumps({"jsonrpc": "1.0", "id": 502, "method": "shutdown"}).encode())
    assert client.wait(502, timeout=10)["error"]["code"] == -32600
    client.send_raw(json.dumps({"jsonrpc": "2.0", "id": {"a": 1}, "method": "shutdown"}).encode())
    assert client.orphans.get(timeout=10)["error"]["code"] == -32600
    assert_still_serving(client)


@pytest.mark.parametrize("params, field", [
    ({"textDocument": {"uri": DOC_URI}, "context": {"triggerKind": 2}}, "position"),
    ({"textDocument": {"uri": DOC_URI}, "position": {"line": "two", "character": 0},
      "context": {"triggerKind": 2}}, "line"),
    ({"textDocument": DOC_URI, "position": CURSOR, "context": {"triggerKind": 2}}, "textDocument"),
    ({"textDocument": {"uri": DOC_URI}, "position": {"line": -1, "character": 0},
      "context": {"triggerKind": 2}}, "line"),
    (["not", "an", "object"], "params"),
])
def test_params_of_the_wrong_shape_get_invalid_params(client, params, field):
    reply = client.call("textDocument/inlineCompletion", params, timeout=10)
    error = reply["error"]
    assert error["code"] == -32602, reply
    assert "textDocument/inlineCompletion" in error["message"] and field in error["message"], error
    time.sleep(0.1)
    assert client.replies_to(reply["id"]) == 0  # exactly one reply


def test_completion_with_wrong_params_and_llamalab_prompt_with_wrong_params(client):
    reply = client.call("textDocument/completion", {"textDocument": {"uri": DOC_URI}, "position": "3:4"}, timeout=10)
    assert reply["error"]["code"] == -32602 and "position" in reply["error"]["message"]
    reply = client.call("llamalab/prompt", {"position": CURSOR}, timeout=10)
    assert reply["error"]["code"] == -32602 and "textDocument" in reply["error"]["message"]


def test_unknown_methods_and_bad_notifications(client):
    assert client.call("llamalab/noSuchMethod", {}, timeout=10)["error"]["code"] == -32601
    client.notify("llamalab/noSuchNotification", {"x": 1})  # ignored
    client.notify("textDocument/didOpen", {"textDocument": {"uri": "file:///tmp/bad.py"}})  # no text: ignored
    client.notify("textDocument/didChange", {"textDocument": {"uri": "file:///tmp/never-opened.py", "version": 2},
                                             "contentChanges": [{"text": "x = 1\n"}]})
    assert_still_serving(client)


def test_requests_for_documents_never_opened_answer_empty(client):
    for method in ("textDocument/inlineCompletion", "textDocument/completion"):
        reply = client.call(method, {"textDocument": {"uri": "file:///tmp/never-opened.py"},
                                     "position": {"line": 0, "character": 0}, "context": {"triggerKind": 1}},
                            timeout=10)
        assert reply["result"]["items"] == [], reply
    assert client.call("llamalab/prompt", {"textDocument": {"uri": "file:///tmp/never-opened.py"},
                                           "position": {"line": 0, "character": 0}}, timeout=10)["error"]["code"] \
        == -32602


def test_positions_past_the_end_of_the_document_are_clamped(client):
    reply = client.wait(inline(client, {"line": 10_000, "character": 3}), timeout=60)
    assert "result" in reply, reply
    reply = client.wait(inline(client, {"line": 2, "character": 500}), timeout=60)
    assert "result" in reply, reply


def test_a_five_megabyte_document(client):
    uri = "file:///tmp/huge.py"
    block = "".join(f"def handler_{i}(event):\n    return event.get('key_{i}', {i})\n\n" for i in range(1000))
    text = block * (5_000_000 // len(block) + 1)
    assert len(text.encode()) >= 5_000_000
    client.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python",
                                                           "version": 1, "text": text}})
    last = text.count("\n")
    client.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 2}, "contentChanges": [
        {"range": {"start": {"line": last, "character": 0}, "end": {"line": last, "character": 0}},
         "text": "def total(values):\n    return sum("}]})
    reply = client.wait(inline(client, {"line": last + 1, "character": len("    return sum(")}, uri), timeout=120)
    assert "result" in reply, reply
    info = client.call("llamalab/prompt", {"textDocument": {"uri": uri},
                                           "position": {"line": last + 1, "character": len("    return sum(")}},
                       timeout=60)["result"]
    assert info["linePrefix"] == "    return sum(" and info["promptTokens"] <= 256 + 1
    middle = client.wait(inline(client, {"line": last // 2, "character": 4}, uri), timeout=120)
    assert "result" in middle
    client.notify("textDocument/didClose", {"textDocument": {"uri": uri}})


def test_a_storm_of_edits_and_cancels(client):
    """200 keystrokes, a request after every fourth, every other request cancelled at once: each
    request gets exactly one reply (a result, or RequestCancelled), and the last one a suggestion."""
    uri = "file:///tmp/storm.py"
    client.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                           "text": "def greet(name):\n    message = \n"}})
    typed = ("'Hello, ' + name + '!' # " * 10)[:200]
    requests, cancelled = [], set()
    for i, char in enumerate(typed):
        column = len("    message = ") + i
        client.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": i + 2}, "contentChanges": [
            {"range": {"start": {"line": 1, "character": column}, "end": {"line": 1, "character": column}},
             "text": char}]})
        if i % 4 == 3:
            request = inline(client, {"line": 1, "character": column + 1}, uri)
            requests.append(request)
            if len(requests) % 2:
                client.notify("$/cancelRequest", {"id": request})
                cancelled.add(request)
    assert len(requests) == 50
    for request in requests:
        reply = client.wait(request, timeout=60)
        if "error" in reply:
            assert reply["error"]["code"] == -32800 and request in cancelled, reply
        else:
            assert isinstance(reply["result"]["items"], list)
    time.sleep(0.2)
    assert all(client.replies_to(r) == 0 for r in requests)  # none answered twice
    end = {"line": 1, "character": len("    message = " + typed)}
    info = client.call("llamalab/prompt", {"textDocument": {"uri": uri}, "position": end}, timeout=30)["result"]
    assert info["linePrefix"] == "    message = " + typed and info["lineSuffix"] == ""  # every edit, in order
    client.send({"id": "final", "method": "textDocument/inlineCompletion", "params": {
        "textDocument": {"uri": uri}, "position": {"line": 0, "character": len("def greet(name):")},
        "context": {"triggerKind": 1}}})
    assert "result" in client.wait("final", timeout=60)
    assert_still_serving(client)


def test_a_model_that_cannot_be_found_is_shown_once_and_requests_answer_empty(tmp_path):
    env = dict(os.environ, LLAMALAB_HOME=str(tmp_path / "home"))
    proc = subprocess.Popen([sys.executable, "-m", "llamalab.lsp"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env)
    c = Client(proc)
    try:
        c.call("initialize", {"processId": None, "rootUri": None, "capabilities": {},
                              "initializationOptions": {"model": str(tmp_path / "missing.gguf"), "debounceMs": 0}})
        c.notify("initialized", {})
        c.notify("textDocument/didOpen", {"textDocument": {"uri": DOC_URI, "languageId": "python",
                                                           "version": 1, "text": DOC}})
        for _ in range(2):
            assert c.wait(inline(c, CURSOR), timeout=60)["result"]["items"] == []
        shown = c.notifications.get(timeout=10)
        assert shown["method"] == "window/showMessage" and shown["params"]["type"] == 1  # Error
        assert "missing.gguf" in shown["params"]["message"], shown
        time.sleep(0.2)
        assert c.notifications.empty()  # once, not once per request
        assert proc.poll() is None
    finally:
        proc.kill()
