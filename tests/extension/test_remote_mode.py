"""``remote_url``: the extension loads nothing and fronts an OpenAI-compatible server
(here llama-cpp-python's, on the demo model), for chats and the /v1 routes alike."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import TEST_HOME, free_port

KEY = "remote-secret"


@pytest.fixture(scope="module")
def upstream(demo_model, tmp_path_factory):
    pytest.importorskip("llama_cpp.server")
    port = free_port()
    log = open(tmp_path_factory.mktemp("upstream") / "server.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(demo_model), "--model_alias", "upstream-smollm2",
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "512", "--n_threads", "1", "--api_key", KEY,
         "--verbose", "False"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail("llama_cpp.server did not start")
        time.sleep(0.2)
    yield url
    process.terminate()
    process.wait(timeout=10)
    log.close()


@pytest.fixture
def llamalab_config(upstream):
    return {"store_dir": str(TEST_HOME), "remote_url": upstream, "remote_api_key": KEY}


async def test_chats_and_v1_routes_go_to_the_remote_server(open_chat, jp_fetch, fetch_json, extension):
    socket = await open_chat()
    await socket.send({"type": "chat", "id": "r1", "content": "Say hi.", "params": {"max_tokens": 6, "temperature": 0}})
    done = await socket.reply_to("r1")
    assert done["type"] == "done" and done["model"] == "upstream-smollm2" and done["text"]
    assert extension.manager._engine is None  # nothing loaded in the Jupyter server

    listed = json.loads((await jp_fetch("llamalab", "v1", "models")).body)
    assert listed["data"][0]["id"] == "upstream-smollm2"
    whole = json.loads((await jp_fetch("llamalab", "v1", "completions", method="POST", body=json.dumps(
        {"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}))).body)
    assert whole["choices"][0]["text"] and whole["model"] == "upstream-smollm2"

    _, settings = await fetch_json("GET", "llamalab/settings")
    assert settings["remote_url"] == extension.remote_url and settings["remote_api_key_set"] is True
    for path in ("llamalab/settings", "llamalab/models", "llamalab/v1/models"):
        assert KEY not in (await jp_fetch(*path.split("/"))).body.decode()


async def test_an_unreachable_remote_is_an_error_reply(open_chat, extension):
    await extension.manager.update(remote_url=f"http://127.0.0.1:{free_port()}")  # nobody listens there
    socket = await open_chat()
    await socket.send({"type": "chat", "id": "r2", "content": "hi"})
    error = await socket.reply_to("r2")
    assert error["type"] == "error" and error["code"] == "engine_error" and "cannot reach" in error["message"]


async def test_inline_completion_falls_back_to_the_remote_completion_api(fetch_json, extension):
    status, reply = await fetch_json("POST", "llamalab/complete", {
        "prefix": "import numpy as np\n\nx = np.", "suffix": "\nprint(x)\n", "max_tokens": 12})
    assert status == 200, reply
    assert reply["fim"] is False and reply["model"] == "upstream-smollm2" and "\n" not in reply["text"]
    assert reply["text"].strip() and reply["finish_reason"] in ("stop", "length")
    assert extension.manager._engine is None  # nothing loaded in the Jupyter server
