"""POST /llamalab/complete, JupyterLab's inline completions, against the demo model: whole and
streamed answers, the shared stop rules, a client that leaves cancelling its generation, bad bodies."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

COUNTING = "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30"


def _events(body: bytes) -> list[dict]:
    return [json.loads(line[len("data: "):]) for line in body.decode().splitlines() if line.startswith("data: ")]


@pytest.fixture
def recorded(extension, monkeypatch):
    """The generations the manager starts, in order."""
    generations = []
    start = extension.manager.start

    async def recording(*args, **kwargs):
        generation = await start(*args, **kwargs)
        generations.append(generation)
        return generation

    monkeypatch.setattr(extension.manager, "start", recording)
    return generations


async def test_mid_line_completion_is_one_line_and_stops_early(fetch_json, recorded):
    status, reply = await fetch_json("POST", "llamalab/complete", {
        "prefix": "import numpy as np\n\nx = np.", "suffix": "\nprint(x)\n", "language": "python",
        "path": "analysis.py", "max_tokens": 48})
    assert status == 200, reply
    assert reply["type"] == "completion" and reply["fim"] is False  # SmolLM2 has no FIM tokens
    assert reply["text"].strip() and "\n" not in reply["text"]
    assert reply["finish_reason"] == "stop" and reply["model"] == "smollm2-135m-instruct:q4_1"
    assert 0 < reply["usage"]["completion_tokens"] < 48 and reply["usage"]["prompt_tokens"] > 5
    assert recorded[0].result.completion_tokens == reply["usage"]["completion_tokens"]


async def test_blank_line_completion_keeps_to_the_block(fetch_json):
    status, reply = await fetch_json("POST", "llamalab/complete", {
        "prefix": "for i in range(10):\n    ", "max_tokens": 60})
    assert status == 200, reply
    lines = reply["text"].split("\n")
    assert reply["text"].strip() and "```" not in reply["text"]  # the model's next lines leave the block
    assert all(not line.strip() or line.startswith("    ") for line in lines[1:]), reply["text"]
    assert reply["finish_reason"] == "stop" and reply["usage"]["completion_tokens"] < 60  # stopped at the block's end


async def test_streamed_completion_grows_then_ends_with_the_reply(jp_fetch):
    response = await jp_fetch("llamalab", "complete", method="POST", body=json.dumps({
        "prefix": "numbers = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,", "mode": "single",
        "stream": True, "max_tokens": 48}))
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = _events(response.body)
    chunks, last = events[:-1], events[-1]
    assert len(chunks) >= 2 and {c["type"] for c in chunks} == {"completion_chunk"}
    for shorter, longer in zip(chunks, chunks[1:]):
        assert longer["text"].startswith(shorter["text"]) and len(longer["text"]) > len(shorter["text"])
    assert last["type"] == "completion" and last["text"] == chunks[-1]["text"] and "\n" not in last["text"]
    assert last["finish_reason"] == "stop"


async def test_a_client_that_leaves_cancels_its_generation(fetch_json, recorded, extension, jp_http_port,
                                                           jp_base_url, token):
    body = json.dumps({"prefix": COUNTING, "mode": "multi", "max_tokens": 600}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", jp_http_port)
    writer.write(f"POST {jp_base_url}llamalab/complete HTTP/1.1\r\nHost: 127.0.0.1:{jp_http_port}\r\n"
                 f"Authorization: token {token}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()
    deadline = time.monotonic() + 30
    while not recorded and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert recorded, "the generation did not start"
    await asyncio.sleep(0.5)  # it is generating now (this prompt runs for several seconds)
    assert recorded[0].result is None
    writer.close()
    left = time.monotonic()
    while extension.manager.active_count and time.monotonic() - left < 20:
        await asyncio.sleep(0.02)
    assert extension.manager.active_count == 0, "the model was not freed after the client left"
    assert recorded[0].result.finish_reason == "cancelled"
    assert recorded[0].result.completion_tokens < 300

    status, reply = await fetch_json("POST", "llamalab/complete", {"prefix": "x = np.", "max_tokens": 8})
    assert status == 200 and reply["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize("body, field", [
    ({}, "prefix"),
    ({"prefix": 5}, "prefix"),
    ({"prefix": "x", "max_tokens": 0}, "max_tokens"),
    ({"prefix": "x", "mode": "sideways"}, "mode"),
    ({"prefix": "x", "stream": "often"}, "stream"),
    ({"prefix": "x", "temperature": 1}, "temperature"),
])
async def test_bad_bodies_are_400_naming_the_field(fetch_json, body, field, extension):
    status, error = await fetch_json("POST", "llamalab/complete", body)
    assert status == 400 and error["type"] == "error" and error["code"] == "bad_request"
    assert error["message"].startswith(f"invalid {field}") and "\n" not in error["message"]
    assert extension.manager.loaded is None


async def test_not_json_and_unknown_model_are_errors(fetch_json):
    status, error = await fetch_json("POST", "llamalab/complete", "{prefix")
    assert (status, error["code"]) == (400, "bad_request") and "not JSON" in error["message"]
    status, error = await fetch_json("POST", "llamalab/complete", {"prefix": "x", "model": "no-such-model"})
    assert (status, error["code"]) == (404, "model_not_found")


async def test_a_suggestion_on_an_indented_new_line_fits_the_indentation(fetch_json):
    """After `if ...:` and Enter the editor has put 12 spaces; the suggestion must not add a 13th
    (token healing: the prompt ends where the tokenizer would, the model writes the last blank)."""
    prefix = ("class Inventory:\n    def __init__(self):\n        self.items = {}\n\n"
              "    def remove(self, sku, count):\n        if self.items.get(sku, 0) < count:\n            ")
    status, reply = await fetch_json("POST", "llamalab/complete", {"prefix": prefix, "suffix": "", "max_tokens": 16})
    assert status == 200, reply
    assert reply["text"].strip(), reply  # the demo model has something to say here
    assert not reply["text"][:1].isspace(), repr(reply["text"])
