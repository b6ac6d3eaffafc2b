"""One model per server: asking for another waits for what runs on the old one (it is never
cancelled), closes it, and loads the new one; every chat socket hears about it."""

from __future__ import annotations

import json

import pytest

from tests.extension.test_chat_socket import chat


@pytest.fixture
def llamalab_config(demo_model, tmp_path):
    """A store with the demo file under two names, so the server can switch models."""
    from llamalab import ModelStore

    store = ModelStore(tmp_path / "two-models")
    for name in ("demo-a", "demo-b"):
        store.register(name, demo_model, source="test", sha256="0" * 64)
    return {"store_dir": str(store.root), "n_ctx": 512, "default_model": "demo-a", "max_prompt_chars": 100_000}


async def test_switching_models_waits_for_the_old_one_then_loads_the_new(open_chat, extension):
    socket = await open_chat()
    await socket.send(chat("on-a", "Write a long story about llamas.", "one", max_tokens=48, temperature=0))
    await socket.until(lambda m: m["type"] == "token" and m["id"] == "on-a")
    await socket.send({**chat("on-b", "Say hi.", "two", max_tokens=4), "model": "demo-b"})
    finals = {}
    while len(finals) < 2:
        message = await socket.next()
        if message["type"] in ("done", "error"):
            finals[message["id"]] = message
    assert finals["on-a"]["type"] == "done" and finals["on-a"]["finish_reason"] != "cancelled"
    assert finals["on-a"]["model"] == "demo-a"
    assert finals["on-b"]["type"] == "done" and finals["on-b"]["model"] == "demo-b"
    changes = [m["model"] and m["model"]["name"] for m in socket.received if m["type"] == "model_changed"]
    assert changes == ["demo-a", None, "demo-b"]  # loaded, unloaded, loaded
    assert extension.manager.loaded.name == "demo-b"


async def test_allowed_models_limit_what_clients_may_load(open_chat, fetch_json, jp_fetch, extension):
    await extension.manager.update(allowed_models=("demo-a",))
    socket = await open_chat()
    await socket.send({**chat("no", "hi"), "model": "demo-b"})
    error = await socket.reply_to("no")
    assert error["code"] == "model_not_allowed" and "demo-a" in error["message"]
    status, error = await fetch_json("POST", "llamalab/models/load", {"model": "demo-b"})
    assert status == 403 and error["code"] == "model_not_allowed"
    status, error = await fetch_json("POST", "llamalab/pulls", {"model": "llama-2-7b-chat"})
    assert status == 403 and error["code"] == "model_not_allowed"
    status, error = await fetch_json("PATCH", "llamalab/settings", {"default_model": "demo-b"})
    assert status == 403
    _, models = await fetch_json("GET", "llamalab/models")
    assert {m["name"]: m["allowed"] for m in models["stored"]} == {"demo-a": True, "demo-b": False}
    listed = json.loads((await jp_fetch("llamalab", "v1", "models")).body)
    assert [m["id"] for m in listed["data"]] == ["demo-a"]
    await socket.send(chat("yes", "Say hi.", max_tokens=4))
    assert (await socket.reply_to("yes"))["model"] == "demo-a"
