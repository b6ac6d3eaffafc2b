"""RemoteEngine against llama.cpp's own ``llama-server`` (built by scripts/build-llama-server.sh).

The demo model is served by the real binary: chat, completions (OpenAI route and llama-server's
token-id ``/completion``), tokenize equal to the in-process ``LocalEngine``'s, KV-cache hits
reported as ``reused_prompt_tokens``, cancelling that frees the server's only slot. The tiny Code
Llama (FIM tokens) checks that an infilling prompt planned by the suggestion service goes to
``/infill`` and answers what the same ids answer locally. A fake OpenAI-only server checks the
one-line notes and fallbacks for missing routes. Finally the path a 70B user takes across
machines: ``llama-server --rpc`` with two ``rpc-server`` workers on 127.0.0.1.

Without the binaries the tests skip (build them with the script); with ``$LLAMA_SERVER`` set, as
scripts/test.sh does, a missing binary fails instead.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")

from llamalab import GenerationParams, RemoteEngine  # noqa: E402
from llamalab.suggest.service import SuggestionService, SuggestOptions, SuggestRequest  # noqa: E402
from tests.fixtures.fim_remote import suggest_through_infill  # noqa: E402
from tests.fixtures.greedy import first_divergence_margin  # noqa: E402
from tests.fixtures.llama_server import LlamaServer, RpcServer, find_binary  # noqa: E402
from tests.fixtures.waiting import wait_until  # noqa: E402

GREEDY = GenerationParams(max_tokens=24, temperature=0, seed=0)
NEAR_TIE = 0.5  # logits
LONG_PROMPT = "List of numbers: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"
LONG = GenerationParams(max_tokens=400, temperature=0)
CHAT = [{"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"}]


def _binaries_or_skip(*names: str) -> None:
    for name in names or ("llama-server",):
        if find_binary(name) is None:
            message = f"no {name}: run 'bash scripts/build-llama-server.sh'"
            if os.environ.get("LLAMA_SERVER"):
                pytest.fail(f"$LLAMA_SERVER is set but {message}")
            pytest.skip(message)


@pytest.fixture(scope="module")
def server(demo_model, tmp_path_factory):
    _binaries_or_skip()
    srv = LlamaServer(demo_model, tmp_path_factory.mktemp("llama-server") / "server.log", n_ctx=1024)
    yield srv
    srv.stop()


@pytest.fixture()
def remote(server):
    eng = RemoteEngine(server.url, timeout=60)
    yield eng
    eng.close()


# -- generation ---------------------------------------------------------------------------
def test_capabilities_of_llama_server(remote, caplog):
    with caplog.at_level(logging.WARNING, logger="llamalab.engine.remote"):
        caps = remote.capabilities()
        remote.capabilities()
    assert caps.server == "llama-server" and caps.tokenize and caps.token_prompts
    assert remote.accepts_token_prompts
    # SmolLM2's GGUF has no FIM tokens: llama-server's /infill refuses it, said once, in one line
    assert not caps.infill and not remote.fim_tokens().supported
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 1 and "/infill" in notes[0] and "prefix only" in notes[0] and "\n" not in notes[0]
    assert remote.context_size == 1024
    assert remote.describe().n_parallel == 1


def test_chat(remote):
    stream = remote.chat(CHAT, GenerationParams(max_tokens=32, temperature=0))
    pieces = list(stream)
    assert len(pieces) > 1 and "".join(pieces) == stream.result.text
    assert "paris" in stream.result.text.lower()
    assert stream.result.finish_reason in ("stop", "length") and stream.result.prompt_tokens > 10


@pytest.mark.parametrize("prompt", ["The capital of France is", "def fibonacci(n):\n"])
def test_completion_matches_local_greedy(remote, engine, demo_model, prompt):
    stream = remote.complete(prompt, GREEDY)
    pieces = list(stream)
    assert len(pieces) > 1, "the completion arrived in one piece: it was not streamed"
    result = stream.result
    assert result.text == "".join(pieces) and result.completion_tokens >= 1
    # the same prompt as token ids through llama-server's /completion, not streamed by the caller
    by_ids = remote.complete_tokens(engine.tokenize(prompt), GREEDY).collect()
    assert by_ids.text == result.text and by_ids.prompt_tokens == len(engine.tokenize(prompt))
    local = engine.complete(prompt, GREEDY).collect()
    margin = first_divergence_margin(engine, demo_model, engine.tokenize(prompt), local.text, result.text,
                                     GREEDY.repeat_penalty)
    assert margin is None or margin < NEAR_TIE, (margin, local.text, result.text)


@pytest.mark.parametrize("text", ["Hello world", "def f(x):\n    return x * 2\n", "naïve café, 日本語"])
def test_tokenize_matches_local(remote, engine, text):
    ids = remote.tokenize(text)
    assert ids == engine.tokenize(text)
    assert remote.count_tokens(text) == len(ids)
    assert remote.detokenize(ids) == engine.detokenize(ids)


def test_repeated_prompt_reports_cached_tokens(remote, engine):
    prompt = "A long shared preamble about rivers, mountains and numbers. " * 4 + "The end:"
    n_prompt = len(engine.tokenize(prompt))
    params = GenerationParams(max_tokens=4, temperature=0)
    remote.complete("Something else entirely.", params).collect()  # the slot holds another prompt
    first = remote.complete(prompt, params).collect()
    second = remote.complete(prompt, params).collect()
    assert first.reused_prompt_tokens is not None and first.reused_prompt_tokens < n_prompt // 2
    assert second.reused_prompt_tokens is not None and second.reused_prompt_tokens >= n_prompt - 1
    assert second.evaluated_prompt_tokens is not None and second.evaluated_prompt_tokens <= 1
    by_ids = remote.complete_tokens(engine.tokenize(prompt), params).collect()  # llama-server's timings
    assert by_ids.reused_prompt_tokens is not None and by_ids.reused_prompt_tokens >= n_prompt - 1


def test_cancel_frees_the_only_slot(server, remote):
    cancels = lambda: re.findall(r"cancel task, id_task = (\d+)", server.log_text())  # noqa: E731
    before = len(cancels())
    stream = remote.complete(LONG_PROMPT, LONG)
    pieces = []
    for piece in stream:
        pieces.append(piece)
        if len(pieces) == 3:
            stream.cancel()
    assert stream.result.finish_reason == "cancelled" and 3 <= len(pieces) < 100
    wait_until(lambda: len(cancels()) > before, "llama-server to cancel the task")
    task = cancels()[-1]
    wait_until(lambda: f"task {task} | stop processing" in server.log_text(), "the slot's release")
    n_tokens = int(re.search(rf"task {task} \| stop processing: n_tokens = (\d+)", server.log_text()).group(1))
    assert n_tokens < 43 + 100, f"the cancelled task went on to {n_tokens} tokens"
    # the server has one slot: the next request gets it
    after = remote.complete("The capital of France is", GenerationParams(max_tokens=4, temperature=0)).collect()
    assert after.text and after.finish_reason == "length"


# -- fill-in-the-middle through /infill ----------------------------------------------------
@pytest.fixture(scope="module")
def code_llama_server(tmp_path_factory):
    _binaries_or_skip()
    pytest.importorskip("torch")
    pytest.importorskip("sentencepiece")
    from tests.core.test_fim import code_llama as make

    maker = make.__wrapped__(tmp_path_factory)
    local, _sp = next(maker)
    path = local.info.path
    local.gguf_path = Path(getattr(path, "path", path))  # the converter's result names its file
    srv = LlamaServer(local.gguf_path, tmp_path_factory.mktemp("codellama-server") / "server.log", n_ctx=256)
    yield local, srv
    srv.stop()
    maker.close()


def test_fim_goes_to_infill_and_matches_local(code_llama_server):
    local, srv = code_llama_server
    remote = RemoteEngine(srv.url, timeout=60)
    routes: list[str] = []
    remote._client.event_hooks["request"].append(lambda request: routes.append(request.url.path))
    try:
        assert remote.capabilities().infill
        tokens, text, expected = suggest_through_infill(remote, local, routes)
        margin = first_divergence_margin(local, local.gguf_path, tokens, expected, text, 1.0)
        assert margin is None or margin < NEAR_TIE, (margin, expected, text)
    finally:
        remote.close()


# -- a server without llama-server's routes -------------------------------------------------
class _OpenAIOnly(BaseHTTPRequestHandler):
    """/v1/models and a streamed /v1/completions echoing the prompt's length; 404 elsewhere."""

    seen: list[dict] = []

    def log_message(self, *args) -> None:
        pass

    def _json(self, status: int, data: dict) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            return self._json(200, {"data": [{"id": "fake"}]})
        self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        if self.path != "/v1/completions":
            return self._json(404, {"error": "not found"})
        type(self).seen.append(body)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for text, finish in (("x", None), ("y", "length")):
            event = {"choices": [{"text": text, "finish_reason": finish}]}
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")


@pytest.fixture()
def openai_only():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _OpenAIOnly)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _OpenAIOnly.seen = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_missing_routes_are_named_once_and_fall_back(openai_only, caplog):
    remote = RemoteEngine(openai_only)
    with caplog.at_level(logging.WARNING, logger="llamalab.engine.remote"):
        assert not remote.accepts_token_prompts
        assert remote.count_tokens("abcdefghi") == 3  # approximate: 4 characters a token
        remote.fim_tokens()
        remote.capabilities()
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 2 and all("\n" not in n and openai_only in n for n in notes)
    assert "/infill" in notes[0] and "prefix only" in notes[0]
    assert "tokenize" in notes[1] and "approximate" in notes[1]
    service = SuggestionService(SuggestOptions(prefix_tokens=120, suffix_tokens=40, context_tokens=0))
    request = SuggestRequest(document="", prefix="x = 1\ny = ", suffix="\nprint(y)\n", max_tokens=2)
    stream, plan = service.start(remote, request)
    assert stream.collect().text == "xy"
    assert not plan.infill and "print(y)" not in _OpenAIOnly.seen[-1]["prompt"]
    assert _OpenAIOnly.seen[-1]["prompt"].endswith("y = ")
    remote.close()


# -- llama-server spreading the layers over two rpc-server workers ------------------------------
def test_rpc_workers_hold_the_layers_and_answer_the_same(server, remote, demo_model, tmp_path):
    _binaries_or_skip("llama-server", "rpc-server")
    workers = [RpcServer(tmp_path / f"rpc{i}.log") for i in range(2)]
    try:
        endpoints = ",".join(w.endpoint for w in workers)
        with LlamaServer(demo_model, tmp_path / "server.log", n_ctx=1024,
                         extra=("--rpc", endpoints, "-ngl", "99", "-v")) as spread:  # -v: the load log
            log = spread.log_text()
            for worker in workers:
                assert re.search(rf"RPC\d*\[{re.escape(worker.endpoint)}\].*buffer size", log), log[-3000:]
            assert re.search(r"offloaded (\d+)/\1 layers", log), "not every layer went to the RPC devices"
            via_rpc = RemoteEngine(spread.url, timeout=120)
            try:
                spread_chat = via_rpc.chat(CHAT, GREEDY).collect()
            finally:
                via_rpc.close()
        alone = remote.chat(CHAT, GREEDY).collect()
        assert spread_chat.text and spread_chat.text == alone.text
    finally:
        for worker in workers:
            worker.stop()


# -- what `llamalab doctor` shows for a remote model ----------------------------------------------
def test_doctor_describes_the_remote_server(server, openai_only, tmp_path):
    from llamalab import ModelStore
    from llamalab.doctor import build_report, format_report

    report = build_report(store=ModelStore(tmp_path / "store"), gpus=[], offload_supported=False,
                          remote_url=server.url)
    line = next(n for n in report.notices if n.startswith("remote server"))
    assert server.url in line and "(llama-server)" in line and "SmolLM2" in line
    assert "1024 tokens, 1 slots" in line and "token prompts yes, /infill no, tokenize yes" in line
    assert any("/infill" in n and "prefix only" in n for n in report.notices)
    assert line in format_report(report)

    other = build_report(store=ModelStore(tmp_path / "store"), gpus=[], offload_supported=False,
                         remote_url=openai_only)
    assert any("(openai-compatible) serves fake" in n and "token prompts no" in n for n in other.notices)
    assert any("approximate" in n for n in other.notices)
