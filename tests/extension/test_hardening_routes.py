"""Issue 13, rows 1-3, as an attacker tries them on a real Jupyter server:

1. the inference routes name models, never files: a path, URL or Hub reference (with the
   kernels' key or the server's token) is a plain 404 that reads nothing and says the same
   whether the file exists or not;
2. naming another model while someone's chat streams never cancels it: the switch waits for it
   (and new requests queue behind the switch, so it is not starved);
3. every text field is size-checked before tokenizing, and tokenizing runs outside the manager's
   lock, so a huge prompt cannot hold up the others.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError

from llamalab import GenerationParams
from tests.extension.test_chat_socket import chat
from tests.fixtures.waiting import until

LIMIT = 100_000


@pytest.fixture
def llamalab_config(demo_model, tmp_path):
    """A store with the demo file under two names, so the server can switch models."""
    from llamalab import ModelStore

    store = ModelStore(tmp_path / "two-models")
    for name in ("demo-a", "demo-b"):
        store.register(name, demo_model, source="test", sha256="0" * 64)
    return {"store_dir": str(store.root), "n_ctx": 512, "default_model": "demo-a", "max_prompt_chars": LIMIT,
            "default_max_tokens": 8}


async def _post(jp_fetch, path: str, body: Any, headers: dict[str, str]) -> tuple[int, str]:
    try:
        response = await jp_fetch(*path.split("/"), method="POST", body=json.dumps(body), headers=dict(headers))
    except HTTPClientError as exc:
        assert exc.response is not None, exc
        return exc.code, exc.response.body.decode()
    return response.code, response.body.decode()


# -- row 1: names, not paths ----------------------------------------------------------------
def _attacks(tmp_path, demo_model) -> dict[str, str]:
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:SECRET-BYTES\n")
    return {"existing file": str(secret), "missing file": str(tmp_path / "missing.txt"),
            "existing gguf": str(demo_model), "missing gguf": str(tmp_path / "missing.gguf"),
            "/etc/passwd": "/etc/passwd", "file url": f"file://{secret}", "home": "~/.bashrc",
            "catalog name then path": f"demo-a:{secret}", "relative": "../../secret.txt",
            "url": "http://127.0.0.1:1/model.gguf", "hub": "hf:owner/repo/model.gguf"}


@pytest.mark.parametrize("route", ["v1/completions", "v1/chat/completions", "tokenize"])
async def test_the_kernel_key_cannot_name_a_file_as_the_model(jp_fetch, extension, tmp_path, demo_model, route):
    key = {"Authorization": f"Bearer {extension.kernel_key}"}
    answers = {}
    for what, ref in _attacks(tmp_path, demo_model).items():
        body = {"model": ref, "prompt": "hi", "messages": [{"role": "user", "content": "hi"}], "content": "hi",
                "max_tokens": 2}
        status, text = await _post(jp_fetch, f"llamalab/{route}", body, key)
        assert status == 404, (what, status, text)
        error = json.loads(text)["error"]
        assert error["code"] == "model_not_found", (what, error)
        assert "SECRET" not in text and "root:" not in text and "does not exist" not in text, (what, text)
        answers[what] = error["message"].replace(ref if len(ref) <= 60 else ref[:57] + "...", "REF")
    assert answers["existing file"] == answers["missing file"] == answers["existing gguf"] == answers["missing gguf"]
    assert extension.manager.loaded is None  # nothing was read or loaded


async def test_the_completion_route_and_the_websocket_refuse_paths_too(fetch_json, open_chat, extension, tmp_path,
                                                                       demo_model):
    socket = await open_chat()
    for i, (what, ref) in enumerate(_attacks(tmp_path, demo_model).items()):
        status, error = await fetch_json("POST", "llamalab/complete", {"prefix": "x = ", "model": ref})
        assert (status, error["code"]) == (404, "model_not_found"), (what, error)
        assert "SECRET" not in json.dumps(error)
        await socket.send({**chat(f"p{i}", "hi", f"c{i}"), "model": ref})
        reply = await socket.reply_to(f"p{i}")
        assert (reply["type"], reply["code"]) == ("error", "model_not_found"), (what, reply)
        assert "SECRET" not in json.dumps(reply)
    assert extension.manager.loaded is None


async def test_store_names_still_work_and_a_logged_in_user_may_load_a_path(jp_fetch, fetch_json, extension,
                                                                           demo_model):
    key = {"Authorization": f"Bearer {extension.kernel_key}"}
    status, text = await _post(jp_fetch, "llamalab/v1/completions", {"model": "demo-b", "prompt": "Hi",
                                                                     "max_tokens": 2}, key)
    assert status == 200 and json.loads(text)["model"] == "demo-b"
    status, loaded = await fetch_json("POST", "llamalab/models/load", {"model": str(demo_model)})
    assert status == 200 and loaded["location"] == str(demo_model)


# -- row 2: a switch waits, it never cancels -----------------------------------------------------
async def test_naming_another_model_while_a_chat_streams_lets_the_chat_finish(jp_fetch, open_chat, extension):
    socket = await open_chat()
    await socket.send(chat("on-a", "Write a long story about llamas.", "one", max_tokens=48))
    await socket.until(lambda m: m["type"] == "token" and m["id"] == "on-a")
    key = {"Authorization": f"Bearer {extension.kernel_key}"}
    switch = asyncio.ensure_future(_post(jp_fetch, "llamalab/v1/completions",
                                         {"model": "demo-b", "prompt": "Hi", "max_tokens": 2}, key))
    done = await socket.reply_to("on-a")
    assert done["type"] == "done" and done["finish_reason"] != "cancelled" and done["model"] == "demo-a", done
    assert done["usage"]["completion_tokens"] > 1
    status, text = await asyncio.wait_for(switch, 60)
    assert status == 200 and json.loads(text)["model"] == "demo-b", text
    await socket.until(lambda m: m["type"] == "model_changed" and (m["model"] or {}).get("name") == "demo-b")
    changes = [m["model"] and m["model"]["name"] for m in socket.received if m["type"] == "model_changed"]
    assert changes == ["demo-a", None, "demo-b"]
    assert socket.received.index(done) < next(i for i, m in enumerate(socket.received)
                                             if m["type"] == "model_changed" and m["model"] is None)


async def test_a_waiting_switch_is_not_starved_by_new_requests_for_the_old_model(open_chat, extension):
    socket = await open_chat()
    await socket.send(chat("a1", "Write a long story about llamas.", "one", max_tokens=48))
    await socket.until(lambda m: m["type"] == "token" and m["id"] == "a1")
    await socket.send({**chat("b", "Say hi.", "two", max_tokens=4), "model": "demo-b"})
    await until(lambda: extension.manager._lock.locked())  # the switch waits, holding the lock
    await socket.send(chat("a2", "Say hello.", "three", max_tokens=4))  # the old model again: queues behind it
    finals: dict[str, dict] = {}
    order = []
    while len(finals) < 3:
        message = await socket.next(timeout=60)
        if message["type"] in ("done", "error"):
            finals[message["id"]] = message
            order.append(message["id"])
    assert all(m["type"] == "done" and m["finish_reason"] != "cancelled" for m in finals.values()), finals
    assert order == ["a1", "b", "a2"]
    assert (finals["b"]["model"], finals["a2"]["model"]) == ("demo-b", "demo-a")


async def test_a_switch_that_waits_too_long_gives_up_and_cancels_nothing(open_chat, extension):
    await extension.manager.update(switch_wait_s=0.3)
    socket = await open_chat()
    await socket.send(chat("long", "Write a long story about llamas.", "one", max_tokens=400))
    await socket.until(lambda m: m["type"] == "token" and m["id"] == "long")
    await socket.send({**chat("b", "Say hi.", "two"), "model": "demo-b"})
    refused = await socket.reply_to("b")
    assert (refused["type"], refused["code"]) == ("error", "busy") and "demo-a" in refused["message"], refused
    assert extension.manager.loaded.name == "demo-a"
    assert not any(m.get("id") == "long" and m["type"] == "done" for m in socket.received)  # still streaming
    await socket.send({"type": "cancel", "id": "stop", "target": "long"})
    assert (await socket.reply_to("long", ("done", "error")))["type"] == "done"


async def test_a_switch_waits_for_a_request_still_formatting_its_prompt(extension):
    """The engine is registered before the lock is released, so it cannot be closed under a
    prompt being tokenized off the lock."""
    manager = extension.manager
    release, entered = threading.Event(), threading.Event()

    def begin(engine):
        entered.set()
        assert release.wait(60)
        return engine.complete("Once upon a time", GenerationParams(max_tokens=4, temperature=0))

    starting = asyncio.ensure_future(manager.start("demo-a", 16, begin))
    await until(entered.is_set)
    switching = asyncio.ensure_future(manager.load("demo-b"))
    await until(manager._lock.locked)
    assert not switching.done() and manager.loaded.name == "demo-a"
    release.set()
    generation = await asyncio.wait_for(starting, 60)
    async for _ in generation:
        pass
    await generation.aclose()
    assert generation.result.finish_reason != "cancelled"
    assert (await asyncio.wait_for(switching, 60)).name == "demo-b"


# -- row 3: bounded work per request --------------------------------------------------------------
async def test_a_huge_system_message_is_refused_before_tokenizing(jp_fetch, extension):
    key = {"Authorization": f"Bearer {extension.kernel_key}"}
    normal = asyncio.ensure_future(_post(jp_fetch, "llamalab/v1/chat/completions", {
        "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}, key))
    started = time.monotonic()
    status, text = await _post(jp_fetch, "llamalab/v1/chat/completions", {
        "messages": [{"role": "system", "content": "x" * 10_000_000}, {"role": "user", "content": "hi"}]}, key)
    assert time.monotonic() - started < 10
    error = json.loads(text)["error"]
    assert (status, error["code"]) == (413, "prompt_too_long") and "message 1 (system)" in error["message"], error
    status, text = await asyncio.wait_for(normal, 60)  # the other request was not held up
    assert status == 200 and json.loads(text)["choices"][0]["message"]["content"], text


@pytest.mark.parametrize(("what", "messages"), [
    ("one old message", [{"role": "user", "content": "q" * (LIMIT + 1)}, {"role": "assistant", "content": "a"},
                         {"role": "user", "content": "hi"}]),
    ("the sum", [{"role": "system", "content": "s" * (LIMIT // 2)}, {"role": "user", "content": "q" * (LIMIT // 3)},
                 {"role": "assistant", "content": "a" * (LIMIT // 3)}, {"role": "user", "content": "hi"}]),
])
async def test_every_chat_message_and_their_sum_are_size_checked(jp_fetch, extension, what, messages):
    key = {"Authorization": f"Bearer {extension.kernel_key}"}
    status, text = await _post(jp_fetch, "llamalab/v1/chat/completions", {"messages": messages}, key)
    error = json.loads(text)["error"]
    assert (status, error["code"]) == (413, "prompt_too_long"), (what, error)
    assert str(LIMIT) in error["message"] and "\n" not in error["message"]
    assert extension.manager.loaded is None  # refused before the model was even needed


async def test_the_websocket_checks_system_and_history_before_storing_them(open_chat, extension):
    socket = await open_chat()
    history = [{"role": "user", "content": "q" * (LIMIT // 3)}, {"role": "assistant", "content": "a" * (LIMIT // 3)}]
    cases = [
        ({"system": "x" * 10_000_000}, "system prompt"),
        ({"system": "s" * (LIMIT // 2), "history": history}, "in all"),
    ]
    for i, (extra, words) in enumerate(cases):
        started = time.monotonic()
        await socket.send({**chat(f"big{i}", "hi", "c"), **extra})
        reply = await socket.reply_to(f"big{i}")
        assert time.monotonic() - started < 10
        assert (reply["type"], reply["code"]) == ("error", "prompt_too_long") and words in reply["message"], reply
    assert extension.manager.loaded is None
    await socket.send(chat("ok", "Say hi.", "c", max_tokens=4))  # the refused system prompt was not kept
    ok = await socket.reply_to("ok")
    assert ok["type"] == "done" and ok["usage"]["prompt_tokens"] < 100, ok


async def test_a_long_conversation_drops_its_oldest_turns_to_fit_the_limit(open_chat, extension):
    await extension.manager.update(max_prompt_chars=400)
    socket = await open_chat()
    for i in range(6):
        await socket.send(chat(f"t{i}", f"Question {i}: " + "llama " * 10, "long", max_tokens=16))
        reply = await socket.reply_to(f"t{i}")
        assert reply["type"] == "done", reply  # the server's own turns never make it prompt_too_long


async def test_tokenizing_runs_outside_the_managers_lock(extension):
    manager = extension.manager
    release, entered = threading.Event(), threading.Event()

    def slow_begin(engine):  # stands for a long prompt being formatted and tokenized
        entered.set()
        assert release.wait(60)
        return engine.complete("Hi", GenerationParams(max_tokens=2, temperature=0))

    slow = asyncio.ensure_future(manager.start(None, 2, slow_begin))
    try:
        await until(entered.is_set)
        tokens = await asyncio.wait_for(manager.tokenize("hello", add_bos=False, special=False), 30)
        assert tokens
        other = await asyncio.wait_for(manager.complete("Hello", GenerationParams(max_tokens=2, temperature=0)), 30)
        async for _ in other:
            pass
        await other.aclose()
        assert not slow.done()
    finally:
        release.set()
    generation = await asyncio.wait_for(slow, 60)
    await generation.aclose()
