"""RemoteEngine against a real OpenAI-compatible server: llama-cpp-python's own
(``python -m llama_cpp.server``) on the demo model, started as a subprocess per module.

Greedy output is compared with the in-process ``LocalEngine`` on the same file, so the
wire format, BOS handling and sampling settings are checked end to end. A second server
started with ``--api_key`` and a metadata override that makes the tokenizer add BOS covers
authentication and the BOS alignment of ``tokenize``. When a test fails, the tail of the
server's log is shown in its teardown section.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import pytest

httpx = pytest.importorskip("httpx")
for _module in ("fastapi", "uvicorn", "sse_starlette"):
    pytest.importorskip(_module, reason="llama-cpp-python's server needs llama-cpp-python[server]")

from llamalab import (ConfigError, GenerationParams, RemoteEngine, ServerResponseError,  # noqa: E402
                      ServerUnreachableError)
from tests.conftest import free_port  # noqa: E402
from tests.fixtures.greedy import first_divergence_margin  # noqa: E402

NEAR_TIE = 0.5  # logits
GREEDY = GenerationParams(max_tokens=24, temperature=0)
# Greedy decoding keeps counting past 400 tokens on this prompt, so a cancelled stream
# that was not really cancelled would show.
LONG_PROMPT = "List of numbers: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"
LONG = GenerationParams(max_tokens=400, temperature=0)
API_KEY = "secret"
DISCONNECTED = "Disconnected from client"  # what the server logs when a client drops a stream


class Server:
    """One ``llama_cpp.server`` subprocess, its log in a file."""

    def __init__(self, model: Path, log_path: Path, *, n_ctx: int, extra: tuple[str, ...] = (),
                 api_key: Optional[str] = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        command = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(model),
            "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(n_ctx),
            # one thread: on a small shared machine two busy-waiting llama.cpp thread pools
            # (this server's and the in-process engine's) slow each other down many times over;
            # greedy output does not depend on the thread count
            "--seed", "0", "--n_threads", "1", "--n_threads_batch", "1",
            # a new request must not silently end a running stream: cancelling is what is tested
            "--interrupt_requests", "False", "--verbose", "False", *extra,
        ]
        if api_key:
            command += ["--api_key", api_key]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.model_id = self._wait_ready(deadline_s=60)

    def _wait_ready(self, deadline_s: float) -> str:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                pytest.fail(f"llama_cpp.server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                response = httpx.get(f"{self.url}/v1/models", headers=self.headers, timeout=2)
                if response.status_code == 200:
                    return response.json()["data"][0]["id"]
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"llama_cpp.server not ready after {deadline_s:.0f} s:\n{self.log_tail()}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def disconnects(self) -> int:
        return self.log_text().count(DISCONNECTED)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


_servers: list[Server] = []


@pytest.fixture(scope="module")
def server(demo_model, tmp_path_factory):
    srv = Server(demo_model, tmp_path_factory.mktemp("llama-server") / "server.log", n_ctx=1024)
    _servers.append(srv)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def keyed_server(demo_model, tmp_path_factory):
    """Needs a key, and its tokenizer adds BOS (SmolLM2's metadata says not to)."""
    srv = Server(demo_model, tmp_path_factory.mktemp("llama-server-key") / "server.log", n_ctx=256,
                 extra=("--kv_overrides", "tokenizer.ggml.add_bos_token=bool:true"), api_key=API_KEY)
    _servers.append(srv)
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def _server_log_on_failure(request):
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed > failed:
        for srv in _servers:
            sys.stderr.write(f"--- {srv.url} log (tail) ---\n{srv.log_tail()}\n")


@pytest.fixture()
def remote(server):
    eng = RemoteEngine(server.url, timeout=30)
    yield eng
    eng.close()


def _wait_for(predicate, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# -- generation ---------------------------------------------------------------------------
@pytest.mark.parametrize("prompt", ["The capital of France is", "def fibonacci(n):\n"])
def test_streamed_completion_matches_local_greedy(remote, engine, demo_model, prompt):
    stream = remote.complete(prompt, GREEDY)
    pieces = list(stream)
    result = stream.result
    assert len(pieces) > 1, "the completion arrived in one piece: it was not streamed"
    assert "".join(pieces) == result.text
    assert result.finish_reason in ("stop", "length")
    assert result.completion_tokens >= 1
    assert result.time_to_first_token_s is not None and result.duration_s >= result.time_to_first_token_s

    local = engine.complete(prompt, GREEDY).collect()
    # The server's context differs in size (and the local engine batches other sequences): its
    # kernels may round differently, so greedy answers may part at a near-tie, and only there.
    margin = first_divergence_margin(engine, demo_model, engine.tokenize(prompt), local.text, result.text,
                                     GREEDY.repeat_penalty)
    assert margin is None or margin < NEAR_TIE, (margin, local.text, result.text)
    if margin is None:
        assert result.finish_reason == local.finish_reason


def test_streamed_chat(remote):
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "What is the capital of France?"}]
    stream = remote.chat(messages, GenerationParams(max_tokens=32, temperature=0))
    pieces = list(stream)
    assert len(pieces) > 1
    assert "".join(pieces).strip()
    assert "".join(pieces) == stream.result.text
    assert stream.result.finish_reason in ("stop", "length")


# -- cancelling ---------------------------------------------------------------------------
def _cancel_after_three(remote, stream, how: str) -> list[str]:
    pieces: list[str] = []
    third = threading.Event()
    canceller = None
    if how != "consumer":
        cancel = stream.cancel if how == "stream.cancel" else remote.cancel
        canceller = threading.Thread(target=lambda: third.wait(30) and cancel())
        canceller.start()
    for piece in stream:
        pieces.append(piece)
        if len(pieces) == 3:
            third.set()
            if how == "consumer":
                stream.cancel()
    third.set()
    if canceller is not None:
        canceller.join(10)
    return pieces


@pytest.mark.parametrize("how", ["consumer", "stream.cancel", "engine.cancel"])
def test_cancel_stops_the_stream_and_the_server(server, remote, how):
    before = server.disconnects()
    stream = remote.complete(LONG_PROMPT, LONG)
    start = time.monotonic()
    pieces = _cancel_after_three(remote, stream, how)
    elapsed = time.monotonic() - start

    assert stream.result.finish_reason == "cancelled"
    assert 3 <= len(pieces) < 100, f"{len(pieces)} pieces arrived after cancelling"
    assert stream.result.text == "".join(pieces)
    assert elapsed < 10, f"the cancelled stream took {elapsed:.1f} s to end"
    assert _wait_for(lambda: server.disconnects() > before), "the server never saw the client go"

    after = remote.complete("The capital of France is", GenerationParams(max_tokens=4, temperature=0))
    after = after.collect()
    assert after.text and after.finish_reason in ("stop", "length")


def test_cancel_before_reading_sends_nothing(remote):
    stream = remote.complete(LONG_PROMPT, LONG)
    stream.cancel()
    assert list(stream) == []
    assert stream.result.finish_reason == "cancelled"


def test_closing_an_abandoned_stream_frees_the_server(server, remote):
    before = server.disconnects()
    stream = remote.complete(LONG_PROMPT, LONG)
    next(stream)
    stream.close()
    assert _wait_for(lambda: server.disconnects() > before)
    assert remote.complete("Hello", GenerationParams(max_tokens=3, temperature=0)).collect().text


# -- tokenize and describe ----------------------------------------------------------------
@pytest.mark.parametrize("text", ["Hello world", "def f(x):\n    return x * 2\n", "naïve café, 日本語"])
def test_tokenize_matches_local(remote, engine, text):
    assert remote.tokenize(text) == engine.tokenize(text)
    assert remote.count_tokens(text) == engine.count_tokens(text)


def test_tokenize_parses_special_tokens_like_local(remote, engine):
    text = "<|im_start|>user\nHi<|im_end|>"
    assert remote.tokenize(text, special=True) == engine.tokenize(text, special=True)


def test_tokenize_drops_the_bos_the_server_adds(keyed_server, engine):
    remote = RemoteEngine(keyed_server.url, api_key=API_KEY, timeout=30)
    try:
        raw = httpx.post(f"{keyed_server.url}/extras/tokenize", json={"input": "Hello world"},
                         headers=keyed_server.headers).json()["tokens"]
        assert raw[0] == engine.tokenizer.bos_id, "the override did not make the server add BOS"
        assert remote.tokenize("Hello world") == engine.tokenize("Hello world")
        assert remote.tokenize("Hello world", add_bos=True) == engine.tokenize("Hello world", add_bos=True)
    finally:
        remote.close()


def test_describe_names_the_served_model(server, remote):
    description = remote.describe()
    assert description.backend == "remote"
    assert description.name == server.model_id
    assert description.location == server.url
    assert remote.model_name() == server.model_id


# -- errors -------------------------------------------------------------------------------
def test_unreachable_server_fails_fast_with_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    remote = RemoteEngine(url, connect_timeout=2)
    start = time.monotonic()
    with pytest.raises(ServerUnreachableError) as info:
        remote.complete("Hello", GREEDY).collect()
    assert time.monotonic() - start < 5
    assert url in str(info.value) and "\n" not in str(info.value)

    named = RemoteEngine(url, model="any", connect_timeout=2)  # no /v1/models lookup first
    with pytest.raises(ServerUnreachableError):
        named.complete("Hello", GREEDY).collect()
    with pytest.raises(ServerUnreachableError):
        named.tokenize("Hello")


def test_server_error_is_reported_then_the_engine_goes_on(server, remote):
    prompt = "word " * 1500  # far past the server's 1024-token window
    params = GenerationParams(max_tokens=8, temperature=0)
    answer = httpx.post(f"{server.url}/v1/completions", json={"prompt": prompt, "max_tokens": 8})
    assert answer.status_code == 400
    expected = answer.json()["error"]["message"].split(",")[0]  # "This model's maximum context length is ..."

    with pytest.raises(ServerResponseError) as info:
        remote.complete(prompt, params).collect()
    assert info.value.status_code == 400
    assert expected in str(info.value)
    assert "\n" not in str(info.value)

    again = remote.complete("The capital of France is", params).collect()
    assert again.text and again.finish_reason in ("stop", "length")


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
def test_base_url_with_or_without_v1(server, suffix):
    remote = RemoteEngine(server.url + suffix, timeout=30)
    try:
        assert remote.describe().name == server.model_id
        result = remote.complete("Hello", GenerationParams(max_tokens=2, temperature=0)).collect()
        assert result.text and result.completion_tokens >= 1
    finally:
        remote.close()


def test_wrong_base_url_says_to_check_it(server):
    with pytest.raises(ServerResponseError) as info:
        RemoteEngine(server.url + "/api").describe()
    assert info.value.status_code == 404 and "base URL" in str(info.value)
    with pytest.raises(ConfigError):
        RemoteEngine(f"127.0.0.1:{server.port}")


def test_api_key_is_required_and_accepted(keyed_server):
    for key in (None, "wrong"):
        with pytest.raises(ServerResponseError) as info:
            RemoteEngine(keyed_server.url, api_key=key).describe()
        assert info.value.status_code == 401
        assert "api_key" in str(info.value) and "\n" not in str(info.value)

    remote = RemoteEngine(keyed_server.url, api_key=API_KEY, timeout=30)
    try:
        assert remote.describe().name == keyed_server.model_id
        result = remote.complete("Hello", GenerationParams(max_tokens=3, temperature=0)).collect()
        assert result.completion_tokens >= 1
    finally:
        remote.close()


def test_capabilities_name_the_missing_infill_once(remote, caplog):
    """llama-cpp-python's server has a tokenize route but no /props, /completion or /infill."""
    import logging

    with caplog.at_level(logging.WARNING, logger="llamalab.engine.remote"):
        caps = remote.capabilities()
        assert not remote.accepts_token_prompts and not remote.fim_tokens().supported
    assert caps.server == "openai-compatible" and caps.tokenize and not caps.infill
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 1 and "/infill" in notes[0] and "prefix only" in notes[0] and "\n" not in notes[0]
    assert remote.count_tokens("Hello world") == 2  # the server's count, not the estimate
