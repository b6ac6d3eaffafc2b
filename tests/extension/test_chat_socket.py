"""The chat WebSocket: streamed tokens, ids on every reply, many conversations, cancel,
and error replies for anything malformed, on a connection that stays usable."""

from __future__ import annotations

import json
import time

from tests.extension.conftest import tokens_of

BROADCASTS = ("model_changed", "conversation_changed", "job_progress")


def chat(request_id: str, content: str, conversation: str = "default", **params) -> dict:
    params.setdefault("temperature", 0)
    params.setdefault("max_tokens", 12)
    return {"type": "chat", "id": request_id, "conversation_id": conversation, "content": content, "params": params}


async def test_a_chat_streams_tokens_then_done(open_chat, extension):
    socket = await open_chat()
    await socket.send(chat("q1", "Name one animal."))
    seen = await socket.until(lambda m: m.get("id") == "q1" and m["type"] in ("done", "error"))
    done = seen[-1]
    assert done["type"] == "done", done
    assert all(m["id"] == "q1" and m["conversation_id"] == "default" for m in seen if m["type"] == "token")
    assert tokens_of(seen, "q1") == done["text"] != ""
    assert done["finish_reason"] in ("stop", "length") and done["model"] == "smollm2-135m-instruct:q4_1"
    assert 0 < done["usage"]["completion_tokens"] <= 12 and done["usage"]["prompt_tokens"] > 0
    assert extension.manager.loaded.name == done["model"]
    assert any(m["type"] == "model_changed" and m["model"]["name"] == done["model"] for m in socket.received)


async def test_conversations_remember_and_reset(open_chat):
    socket = await open_chat()
    await socket.send(chat("a1", "My name is Ada.", "c1"))
    assert (await socket.reply_to("a1"))["type"] == "done"
    await socket.send(chat("a2", "What is my name?", "c1"))
    answer = await socket.reply_to("a2")
    assert answer["type"] == "done"
    await socket.send({"type": "history", "id": "h1", "conversation_id": "c1"})
    history = await socket.reply_to("h1")
    assert [t["role"] for t in history["messages"]] == ["user", "assistant", "user", "assistant"]
    assert history["messages"][0]["content"] == "My name is Ada." and history["messages"][3]["content"] == answer["text"]
    assert answer["usage"]["prompt_tokens"] > 20  # the first exchange went into the prompt
    await socket.send({"type": "reset", "id": "r1", "conversation_id": "c1"})
    assert await socket.reply_to("r1") == {"type": "ack", "id": "r1", "of": "reset", "cancelled": []}
    await socket.send({"type": "history", "id": "h2", "conversation_id": "c1"})
    assert (await socket.reply_to("h2"))["messages"] == []


async def test_cancel_stops_a_generation_mid_stream(open_chat, extension):
    socket = await open_chat()
    await socket.send(chat("long", "Write a long story about llamas.", max_tokens=400, temperature=0))
    await socket.until(lambda m: m["type"] == "token" and m["id"] == "long")
    started = time.monotonic()
    await socket.send({"type": "cancel", "id": "stop1", "target": "long"})
    seen = await socket.until(lambda m: m.get("id") == "long" and m["type"] in ("done", "error"))
    assert time.monotonic() - started < 5
    acks = [m for m in socket.received if m["type"] == "ack"]
    assert acks == [{"type": "ack", "id": "stop1", "of": "cancel", "cancelled": ["long"]}]
    assert seen[-1]["type"] == "done" and seen[-1]["finish_reason"] == "cancelled"
    assert seen[-1]["usage"]["completion_tokens"] < 400
    assert extension.manager.active_count == 0
    await socket.send(chat("after", "Say hi.", max_tokens=4))  # the model is ready for the next request
    assert (await socket.reply_to("after"))["finish_reason"] in ("stop", "length")


async def test_eight_concurrent_chats_with_cancellations_finish_cleanly(open_chat, extension):
    sockets = [await open_chat(), await open_chat()]
    ids = [f"r{i}" for i in range(8)]
    for i, request_id in enumerate(ids):
        await sockets[i % 2].send(chat(request_id, f"Count to {i + 3}.", f"conv{i}", max_tokens=16))
    await sockets[0].send({"type": "cancel", "id": "c-r4", "target": "r4"})      # queued: never starts
    await sockets[1].send({"type": "cancel", "id": "c-odd", "conversation_id": "conv7"})
    started = time.monotonic()
    finals = {}
    for i, socket in enumerate(sockets):
        mine = ids[i::2]
        seen = await socket.until(lambda m: len([x for x in socket.received if x["type"] in ("done", "error")
                                                 and x.get("id") in mine]) == len(mine), timeout=90)
        finals.update({m["id"]: m for m in socket.received if m["type"] in ("done", "error") and m.get("id") in mine})
        assert seen
    assert time.monotonic() - started < 60
    assert sorted(finals) == ids
    assert all(m["type"] == "done" for m in finals.values()), finals
    assert finals["r4"]["finish_reason"] == "cancelled" and finals["r7"]["finish_reason"] == "cancelled"
    assert all(finals[r]["finish_reason"] in ("stop", "length") for r in ids if r not in ("r4", "r7"))
    for request_id in ids:  # each answer is its own: tokens were routed by id
        socket = sockets[int(request_id[1:]) % 2]
        assert tokens_of(socket.received, request_id) == finals[request_id]["text"]
    assert extension.manager.active_count == 0


async def test_malformed_messages_get_error_replies_and_the_socket_stays_open(open_chat):
    socket = await open_chat()
    cases = [
        ("not json at all", None, "bad_request"),
        ("[1, 2, 3]", None, "bad_request"),
        (json.dumps({"type": "dance", "id": "x1"}), "x1", "unknown_type"),
        (json.dumps({"id": "x2", "content": "no type"}), "x2", "unknown_type"),
        (json.dumps({"type": "chat", "id": "x3"}), "x3", "bad_request"),
        (json.dumps({"type": "chat", "id": "x4", "content": "hi", "bogus": True}), "x4", "bad_request"),
        (json.dumps(chat("x5", "hi", temperature=-1)), "x5", "bad_request"),
        (json.dumps({**chat("x6", "hi"), "model": "no-such-model"}), "x6", "model_not_found"),
        (json.dumps(chat("x7", "word " * 60_000)), "x7", "prompt_too_long"),  # over max_prompt_chars
        (json.dumps(chat("x8", "llama " * 3_000)), "x8", "prompt_too_long"),  # over the context window
        (json.dumps({"type": "cancel"}), None, "bad_request"),
        (b"\xff\xfe binary", None, "bad_request"),
    ]
    for raw, request_id, code in cases:
        await socket.send(raw)
        reply = (await socket.until(lambda m: m["type"] not in BROADCASTS))[-1]  # loading and writes are announced
        assert reply["type"] == "error", (raw[:40], reply)
        assert (reply["id"], reply["code"]) == (request_id, code), (raw[:40], reply)
        assert reply["message"] and "\n" not in reply["message"]
    await socket.send(chat("ok", "Say hi.", max_tokens=4))
    assert (await socket.reply_to("ok"))["type"] == "done"


async def test_one_request_at_a_time_per_conversation(open_chat):
    socket = await open_chat()
    await socket.send(chat("first", "Tell me about llamas.", "same", max_tokens=48))
    await socket.send(chat("second", "And alpacas?", "same"))
    error = await socket.reply_to("second")
    assert error["type"] == "error" and error["code"] == "busy" and "first" in error["message"]
    assert (await socket.reply_to("first"))["type"] == "done"


def turns(*pairs: tuple[str, str]) -> list[dict]:
    return [t for q, a in pairs for t in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]


async def test_hello_tells_the_limits(open_chat, extension):
    socket = await open_chat()
    hello = next(m for m in socket.received if m["type"] == "hello")
    config = extension.manager.config
    assert (hello["max_prompt_chars"], hello["max_tokens_limit"]) == (config.max_prompt_chars, config.max_tokens_limit)


async def test_history_seeds_a_conversation_new_to_the_connection(open_chat):
    socket = await open_chat()
    await socket.send(chat("plain", "What is my name?", "fresh"))
    plain = await socket.reply_to("plain")
    seeded_turns = turns(("My name is Ada and I keep llamas.", "Nice to meet you, Ada."))
    await socket.send({**chat("s1", "What is my name?", "seeded"), "history": seeded_turns})
    first = await socket.reply_to("s1")
    assert plain["type"] == first["type"] == "done", (plain, first)
    assert first["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"] + 10  # the model saw the seeded turns
    assert first["usage"]["dropped_messages"] == 0 and first["notice"] is None

    # Now the server has the conversation: a second message keeps the seeded turns, and a history sent again is ignored.
    await socket.send({**chat("s2", "And what do I keep?", "seeded"), "history": turns(("Other.", "Ignored."))})
    second = await socket.reply_to("s2")
    assert second["type"] == "done" and second["usage"]["prompt_tokens"] > first["usage"]["prompt_tokens"]
    await socket.send({"type": "history", "id": "h", "conversation_id": "seeded"})
    history = (await socket.reply_to("h"))["messages"]
    assert history[:2] == seeded_turns
    assert [t["content"] for t in history[2::2]] == ["What is my name?", "And what do I keep?"]
    assert history[3]["content"] == first["text"] and len(history) == 6


async def test_a_seeded_history_too_long_for_the_context_loses_its_oldest_turns(open_chat):
    socket = await open_chat()
    long = turns(*[(f"Question {i}: " + "llama " * 50, f"Answer {i}: " + "alpaca " * 50) for i in range(12)])
    await socket.send({**chat("big", "Say hi.", "long"), "history": long})
    done = await socket.reply_to("big")
    assert done["type"] == "done", done
    assert done["usage"]["dropped_messages"] > 0 and "left out" in done["notice"]
    assert done["usage"]["prompt_tokens"] <= 1024


async def test_a_bad_history_gets_an_error_naming_it(open_chat, extension):
    socket = await open_chat()
    cases = [
        ([{"role": "system", "content": "Be terse."}, *turns(("q", "a"))], "bad_request", "system"),
        ([{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}], "bad_request", "alternate"),
        ([{"role": "user", "content": "q"}], "bad_request", "assistant"),
        (turns(*[("q", "a")] * 101), "bad_request", "200"),
        ([{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}], "bad_request", "content"),
        ("not a list", "bad_request", "list"),
        (turns(("q" * 150_000, "a" * 60_000)), "prompt_too_long", "history"),
    ]
    for i, (history, code, word) in enumerate(cases):
        await socket.send({**chat(f"b{i}", "hi", f"bad{i}"), "history": history})
        reply = await socket.reply_to(f"b{i}")
        assert (reply["type"], reply["code"]) == ("error", code), (i, reply)
        assert "history" in reply["message"] and word in reply["message"] and "\n" not in reply["message"], (i, reply)
    await socket.send({"type": "history", "id": "h", "conversation_id": "bad0"})
    assert (await socket.reply_to("h"))["messages"] == []


# -- conversations kept by the server (extension/conversations.py) ------------------------------
async def test_two_connections_share_a_stored_conversation(open_chat, extension):
    tab1, tab2 = await open_chat(), await open_chat()
    await tab1.send({**chat("t1", "ctx block\n\nMy name is Ada.", "shared"), "display": "My name is Ada.",
                     "context": ["The active cell"]})
    first = await tab1.reply_to("t1")
    assert first["type"] == "done", first
    changed = await tab2.until(lambda m: m["type"] == "conversation_changed" and m["conversation_id"] == "shared"
                               and m["revision"] >= 2)
    assert changed[-1]["deleted"] is False
    stored = extension.conversations.get("shared")
    assert [(e.role, e.content) for e in stored.entries] == [("user", "My name is Ada."), ("assistant", first["text"])]
    assert stored.entries[0].sent == "ctx block\n\nMy name is Ada." and stored.entries[0].context == ["The active cell"]
    assert stored.name == "My name is Ada." and stored.entries[1].usage.completion_tokens > 0

    await tab2.send(chat("fresh", "What is my name?", "other"))
    fresh = await tab2.reply_to("fresh")
    await tab2.send(chat("t2", "What is my name?", "shared"))  # the other tab goes on with the same history
    second = await tab2.reply_to("t2")
    assert second["usage"]["prompt_tokens"] > fresh["usage"]["prompt_tokens"] + 10
    await tab1.send({"type": "history", "id": "h", "conversation_id": "shared"})
    history = (await tab1.reply_to("h"))["messages"]
    assert [t["content"] for t in history] == ["ctx block\n\nMy name is Ada.", first["text"], "What is my name?",
                                               second["text"]]


async def test_a_new_connection_finds_the_history_and_the_connection_keeps_none(open_chat, extension):
    socket = await open_chat()
    await socket.send(chat("a", "Remember the word llama.", "kept"))
    assert (await socket.reply_to("a"))["type"] == "done"
    socket.close()
    reloaded = await open_chat()
    await reloaded.send({"type": "history", "id": "h", "conversation_id": "kept"})
    assert [t["content"] for t in (await reloaded.reply_to("h"))["messages"]][0] == "Remember the word llama."
    extension.conversations.clear("kept")  # e.g. another tab cleared it: the next turn starts afresh
    await reloaded.send({"type": "history", "id": "h2", "conversation_id": "kept"})
    assert (await reloaded.reply_to("h2"))["messages"] == []


async def test_one_answer_at_a_time_per_conversation_over_all_connections(open_chat):
    tab1, tab2 = await open_chat(), await open_chat()
    await tab1.send(chat("long", "Tell me about llamas.", "one", max_tokens=48))
    await tab1.until(lambda m: m["type"] == "token" and m["id"] == "long")
    await tab2.send(chat("other", "And alpacas?", "one"))
    error = await tab2.reply_to("other")
    assert error["code"] == "busy" and "long" in error["message"]
    assert (await tab1.reply_to("long"))["type"] == "done"


async def test_reset_while_answering_keeps_nothing_of_that_answer(open_chat, extension):
    socket = await open_chat()
    await socket.send(chat("long", "Write a long story about llamas.", "gone", max_tokens=400))
    await socket.until(lambda m: m["type"] == "token" and m["id"] == "long")
    await socket.send({"type": "reset", "id": "r", "conversation_id": "gone"})
    assert (await socket.reply_to("r"))["cancelled"] == ["long"]
    assert (await socket.reply_to("long"))["finish_reason"] == "cancelled"
    assert extension.conversations.get("gone").entries == []


async def test_a_failed_turn_keeps_the_question_and_the_error(open_chat, extension):
    socket = await open_chat()
    await socket.send(chat("over", "llama " * 3_000, "failing"))  # over the context window
    error = await socket.reply_to("over")
    assert error["code"] == "prompt_too_long"
    entries = extension.conversations.get("failing").entries
    assert [(e.role, e.code) for e in entries] == [("user", None), ("error", "prompt_too_long")]
    await socket.send(chat("next", "Say hi.", "failing", max_tokens=4))  # an unanswered question is not history
    assert (await socket.reply_to("next"))["type"] == "done"
