"""Stored conversations: the files, the REST routes, and what a bad request gets.

The store is real (files in the test server's private Jupyter data folder); so is the server.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from llamalab.extension.conversations import ConversationStore, Limits
from llamalab.extension.messages import ConversationCreate, ConversationEntry

from tests.extension.test_chat_socket import chat


@pytest.fixture
def store(extension) -> ConversationStore:
    return extension.conversations


def entry(i: int, role: str = "user", text: str = "hello") -> dict:
    return {"id": f"q{i}", "role": role, "content": text, "time": 1000.0 + i}


async def test_the_folder_is_in_the_users_jupyter_data_dir(store, jp_serverapp, fetch_json):
    assert store.folder == Path(jp_serverapp.data_dir) / "llamalab" / "conversations"
    status, listing = await fetch_json("GET", "llamalab/conversations")
    assert status == 200 and listing["conversations"] == [] and listing["problems"] == []
    assert listing["folder"] == str(store.folder)


async def test_create_get_rename_replace_and_delete(store, fetch_json):
    status, made = await fetch_json("POST", "llamalab/conversations",
                                     {"id": "c-1", "name": "First", "entries": [entry(1), entry(1, "assistant", "hi")]})
    assert status == 201 and made["revision"] == 1 and made["version"] == 1
    on_disk = json.loads((store.folder / "c-1.json").read_text())
    assert on_disk["id"] == "c-1" and on_disk["version"] == 1 and len(on_disk["entries"]) == 2

    status, renamed = await fetch_json("PATCH", "llamalab/conversations/c-1", {"name": "Renamed"})
    assert status == 200 and renamed["name"] == "Renamed" and renamed["revision"] == 2
    assert renamed["entries"] == made["entries"]

    status, replaced = await fetch_json("PUT", "llamalab/conversations/c-1",
                                        {"revision": 2, "name": "Renamed", "system": "Be terse.", "entries": []})
    assert status == 200 and replaced["entries"] == [] and replaced["system"] == "Be terse." and replaced["revision"] == 3

    status, listing = await fetch_json("GET", "llamalab/conversations")
    assert [(c["id"], c["name"], c["messages"]) for c in listing["conversations"]] == [("c-1", "Renamed", 0)]
    assert (await fetch_json("DELETE", "llamalab/conversations/c-1"))[0] == 204
    assert not (store.folder / "c-1.json").exists()
    status, missing = await fetch_json("GET", "llamalab/conversations/c-1")
    assert (status, missing["code"]) == (404, "not_found")
    assert [p.name for p in store.folder.iterdir()] == []  # no .part file left behind


async def test_two_concurrent_puts_from_the_same_revision_one_wins_one_gets_409(store, fetch_json):
    await fetch_json("POST", "llamalab/conversations", {"id": "shared", "name": "Shared"})
    bodies = [{"revision": 1, "name": f"Tab {tab}", "entries": [entry(tab, text=f"from tab {tab}")]}
              for tab in (1, 2)]
    results = await asyncio.gather(*(fetch_json("PUT", "llamalab/conversations/shared", b) for b in bodies))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 409], results
    winner = next(reply for status, reply in results if status == 200)
    loser = next(reply for status, reply in results if status == 409)
    assert loser["code"] == "conflict" and "read it again" in loser["message"]
    status, now = await fetch_json("GET", "llamalab/conversations/shared")
    assert now["revision"] == 2 and now["name"] == winner["name"] and now["entries"] == winner["entries"]
    # The loser reads it again and retries from the new revision.
    status, retried = await fetch_json("PUT", "llamalab/conversations/shared", {**bodies[0], "revision": 2})
    assert status == 200 and retried["revision"] == 3


async def test_many_concurrent_writes_keep_the_file_whole(store):
    store.create(ConversationCreate(id="busy"))

    def append(i: int):
        epoch = store.epoch("busy")
        return store.append("busy", [ConversationEntry(id=f"q{i}", role="user", content=f"m{i}"),
                                     ConversationEntry(id=f"q{i}", role="assistant", content=f"a{i}")], epoch)

    await asyncio.gather(*(asyncio.to_thread(append, i) for i in range(20)))
    stored = store.get("busy")
    assert stored.revision == 21 and len(stored.entries) == 40
    assert sorted(e.content for e in stored.entries if e.role == "user") == sorted(f"m{i}" for i in range(20))


async def test_a_corrupt_file_is_reported_and_set_aside_not_lost(store, fetch_json):
    await fetch_json("POST", "llamalab/conversations", {"id": "good", "name": "Good"})
    await fetch_json("POST", "llamalab/conversations", {"id": "bad", "name": "Bad"})
    garbage = b'{"version": 1, "id": "bad", "entr'
    (store.folder / "bad.json").write_bytes(garbage)

    status, listing = await fetch_json("GET", "llamalab/conversations")
    assert status == 200 and [c["id"] for c in listing["conversations"]] == ["good"]
    [problem] = listing["problems"]
    assert problem["file"] == "bad.json" and problem["set_aside_as"].startswith("bad.json.corrupt-")
    assert "could not be read" in problem["message"] and "\n" not in problem["message"]
    assert (store.folder / problem["set_aside_as"]).read_bytes() == garbage  # kept as it was
    assert not (store.folder / "bad.json").exists()

    status, again = await fetch_json("GET", "llamalab/conversations")  # still reported until someone acts
    assert [p["set_aside_as"] for p in again["problems"]] == [problem["set_aside_as"]]
    status, fresh = await fetch_json("POST", "llamalab/conversations", {"id": "bad", "name": "New"})
    assert status == 201  # the id is free again; the set-aside file stays
    assert (store.folder / problem["set_aside_as"]).exists()


async def test_a_wrong_shaped_file_or_one_naming_another_id_is_set_aside_too(store, fetch_json):
    store.folder.mkdir(parents=True, exist_ok=True)
    (store.folder / "shape.json").write_text(json.dumps({"version": 1, "id": "shape", "name": 3}))
    (store.folder / "other.json").write_text(
        store.create(ConversationCreate(id="real")).model_copy(update={"id": "real2"}).model_dump_json())
    status, missing = await fetch_json("GET", "llamalab/conversations/shape")
    assert status == 404 and "shape.json.corrupt-" in missing["message"]
    status, listing = await fetch_json("GET", "llamalab/conversations")
    assert sorted(p["file"] for p in listing["problems"]) == ["other.json", "shape.json"]
    assert [c["id"] for c in listing["conversations"]] == ["real"]


async def test_a_file_from_a_newer_llamalab_is_reported_and_left_alone(store, fetch_json):
    store.folder.mkdir(parents=True, exist_ok=True)
    newer = json.dumps({"version": 99, "id": "future", "whatever": True})
    (store.folder / "future.json").write_text(newer)
    status, listing = await fetch_json("GET", "llamalab/conversations")
    assert listing["conversations"] == [] and "newer llamalab" in listing["problems"][0]["message"]
    assert (store.folder / "future.json").read_text() == newer


@pytest.mark.parametrize("path", ["..%2Fx", "..", "a%2F..%2F..%2Fetc", "-lead", "a.b", "import", "x" * 129, "%00"])
async def test_path_like_ids_are_refused(store, fetch_json, path):
    for method, body in (("GET", None), ("PUT", {"revision": 1, "name": "t", "entries": []}),
                         ("PATCH", {"name": "t"}), ("DELETE", None)):
        status, reply = await fetch_json(method, f"llamalab/conversations/{path}", body)
        assert status in (400, 404, 405), (method, path, status, reply)
        if status == 400:
            assert reply["code"] == "bad_request" and "conversation id" in reply["message"]
    status, reply = await fetch_json("POST", "llamalab/conversations", {"id": "../x"})
    assert (status, reply["code"]) == (400, "bad_request") and "conversation id" in reply["message"]
    assert not (store.folder.parent / "x.json").exists()
    assert not store.folder.exists() or list(store.folder.iterdir()) == []


async def test_traversal_ids_over_the_socket_are_refused(open_chat, store):
    socket = await open_chat()
    await socket.send(chat("t1", "hi", "../../x"))
    reply = await socket.reply_to("t1")
    assert (reply["type"], reply["code"]) == ("error", "bad_request") and "conversation id" in reply["message"]
    await socket.send({"type": "history", "id": "t2", "conversation_id": "a/b"})
    assert (await socket.reply_to("t2"))["code"] == "bad_request"
    assert not store.folder.exists() or list(store.folder.iterdir()) == []


async def test_malformed_and_oversized_bodies_get_a_clear_4xx_and_the_server_keeps_serving(store, fetch_json):
    store.limits = Limits(max_conversations=3, max_conversation_bytes=4096, max_entries=6)
    cases = [
        ("POST", "llamalab/conversations", "{not json", 400, "bad_request"),
        ("POST", "llamalab/conversations", json.dumps({"id": "x", "bogus": 1}), 400, "bad_request"),
        ("POST", "llamalab/conversations", json.dumps({"id": "x", "entries": [{"role": "wizard"}]}), 400, "bad_request"),
        ("POST", "llamalab/conversations", json.dumps({"id": "big", "entries": [entry(1, text="x" * 80_000)]}),
         413, "too_large"),  # body over the cap
        ("POST", "llamalab/conversations", json.dumps({"id": "big", "entries": [entry(1, text="x" * 3900)]}),
         413, "too_large"),  # the conversation over the cap
        ("POST", "llamalab/conversations", json.dumps({"id": "many", "entries": [entry(i) for i in range(7)]}),
         413, "too_large"),  # too many entries
        ("POST", "llamalab/conversations/import", "[]", 400, "bad_request"),
        ("PUT", "llamalab/conversations/nope", json.dumps({"revision": 1, "name": "t", "entries": []}), 404,
         "not_found"),
        ("PATCH", "llamalab/conversations/nope", json.dumps({"revision": -1}), 400, "bad_request"),
    ]
    for method, path, body, status, code in cases:
        got, reply = await fetch_json(method, path, body)
        assert (got, reply["code"]) == (status, code), (body[:60], reply)
        assert reply["message"] and "\n" not in reply["message"]
    for i in range(3):
        assert (await fetch_json("POST", "llamalab/conversations", {"id": f"c{i}"}))[0] == 201
    status, reply = await fetch_json("POST", "llamalab/conversations", {"id": "c3"})
    assert (status, reply["code"]) == (413, "too_large") and "at most 3 conversations" in reply["message"]
    status, listing = await fetch_json("GET", "llamalab/conversations")
    assert status == 200 and len(listing["conversations"]) == 3 and listing["max_conversations"] == 3
    assert sorted(os.listdir(store.folder)) == ["c0.json", "c1.json", "c2.json"]


async def test_import_skips_ids_already_there_and_says_why_others_were_skipped(store, fetch_json):
    store.limits = Limits(max_conversations=4, max_conversation_bytes=4096, max_entries=10)
    await fetch_json("POST", "llamalab/conversations", {"id": "kept", "name": "Server's own"})
    batch = {"conversations": [
        {"id": "kept", "name": "Browser's copy"},
        {"id": "b1", "name": "One", "entries": [entry(1), entry(1, "assistant", "hi")], "created": 5.0, "updated": 6.0},
        {"id": "../b2", "name": "Bad id"},
        {"id": "b3", "entries": [entry(1, text="x" * 5000)]},
        {"id": "b4"},
        {"id": "b5"},
    ]}
    status, reply = await fetch_json("POST", "llamalab/conversations/import", batch)
    assert status == 200 and reply["imported"] == ["b1", "b4", "b5"]
    reasons = {s["id"]: s["reason"] for s in reply["skipped"]}
    assert set(reasons) == {"kept", "../b2", "b3"}
    assert "already" in reasons["kept"] and "conversation id" in reasons["../b2"] and "limit" in reasons["b3"]
    assert (await fetch_json("GET", "llamalab/conversations/kept"))[1]["name"] == "Server's own"
    one = (await fetch_json("GET", "llamalab/conversations/b1"))[1]
    assert (one["created"], one["updated"], len(one["entries"])) == (5.0, 6.0, 2)
    status, again = await fetch_json("POST", "llamalab/conversations/import", batch)  # sent twice: nothing new
    assert again["imported"] == [] and status == 200


async def test_rest_writes_are_announced_on_the_chat_socket(open_chat, fetch_json):
    socket = await open_chat()
    await fetch_json("POST", "llamalab/conversations", {"id": "told", "name": "T"})
    changed = (await socket.until(lambda m: m["type"] == "conversation_changed"))[-1]
    assert changed == {"type": "conversation_changed", "conversation_id": "told", "revision": 1, "deleted": False}
    await fetch_json("DELETE", "llamalab/conversations/told")
    changed = (await socket.until(lambda m: m["type"] == "conversation_changed"))[-1]
    assert changed["deleted"] is True and changed["revision"] is None


CONVERSATION_ROUTES = [("GET", "llamalab/conversations"), ("POST", "llamalab/conversations"),
                       ("POST", "llamalab/conversations/import"), ("GET", "llamalab/conversations/c-1"),
                       ("PUT", "llamalab/conversations/c-1"), ("PATCH", "llamalab/conversations/c-1"),
                       ("DELETE", "llamalab/conversations/c-1")]


@pytest.mark.parametrize("headers", [{"Authorization": ""}, {"Authorization": "token wrong"}, "kernel key"])
async def test_the_routes_need_the_users_credentials(store, fetch_json, extension, headers):
    if headers == "kernel key":  # kernels' key opens the inference routes only, not the user's conversations
        headers = {"Authorization": f"Bearer {extension.kernel_key}"}
    store.create(ConversationCreate(id="c-1", name="Private"))
    for method, path in CONVERSATION_ROUTES:
        body = None if method in ("GET", "DELETE") else json.dumps({"conversations": [], "revision": 1, "name": "x",
                                                                     "entries": []})
        status, _ = await fetch_json(method, path, body, headers=dict(headers))
        assert status == 403, (method, path)
    assert store.get("c-1").name == "Private" and store.get("c-1").revision == 1
