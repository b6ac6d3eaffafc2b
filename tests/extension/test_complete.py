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


def notebook_cells(count: int) -> list[dict]:
    cells = [{"id": "c0", "source": "import math\nimport statistics\n\nvalues = [3.5, 1.25, 9.0, 4.75]\n"}]
    for i in range(1, count):
        cells.append({"id": f"c{i}", "source": f"def step_{i}(data, scale={i}):\n    total = 0.0\n"
                                               f"    for item in data:\n        total += item * scale\n"
                                               f"    return round(total / {i + 1}, 3)\n\nresult_{i} = step_{i}(values)\n"})
    return cells


async def test_a_notebook_request_lays_out_its_cells_and_reuses_the_cache_while_typing(fetch_json):
    """The front end sends the cells; the prompt is the notebook as a percent script, and a
    keystroke after a warm-up evaluates only the few tokens it added."""
    cells = notebook_cells(40) + [{"id": "new", "source": ""}]
    body = {"cells": cells, "cell_index": 40, "language": "python", "path": "work/analysis.ipynb", "max_tokens": 8}
    status, warm = await fetch_json("POST", "llamalab/complete", {**body, "prefix": "best = ", "warm": True})
    assert status == 200 and warm["text"] == "", warm
    status, reply = await fetch_json("POST", "llamalab/complete", {**body, "prefix": "best = m", "explain": True})
    assert status == 200, reply
    prompt = reply["prompt"]  # the notebook's head, then the window (512 tokens at most) up to the cursor
    assert prompt.startswith("# %%\nimport math") and "# %%\ndef step_39(" in prompt and prompt.endswith("best =")
    assert "def step_20(" not in prompt  # the cells between the head and the window are left out
    usage = reply["usage"]
    assert usage["prompt_tokens"] > 250 and usage["prompt_tokens"] - usage["reused_prompt_tokens"] <= 8, usage


async def test_typing_what_the_suggestion_said_is_answered_without_the_model(fetch_json, recorded):
    body = {"cells": [{"id": "a", "source": "import math"}, {"id": "cur", "source": ""}], "cell_index": 1,
            "language": "python", "path": "t.ipynb", "suffix": ""}
    status, reply = await fetch_json("POST", "llamalab/complete", {**body, "prefix": "radius = 2.0\narea = math."})
    assert status == 200 and len(reply["text"]) >= 2, reply
    generations = len(recorded)
    status, again = await fetch_json("POST", "llamalab/complete",
                                     {**body, "prefix": "radius = 2.0\narea = math." + reply["text"][0]})
    assert status == 200 and again["text"] == reply["text"][1:]
    assert len(recorded) == generations  # no generation started


@pytest.mark.parametrize("cells, cell_index, prefix", [
    (notebook_cells(10_000) + [{"id": "new", "source": ""}], 10_000, "x = "),
    ([{"id": "big", "source": ""}], 0, "y = 1\n" * 900_000 + "z = "),
    ([{"id": "md", "source": "# Title", "kind": "markdown"}, {"id": "sh", "source": "%%bash\nls -l"},
      {"id": "cur", "source": ""}], 2, "print("),
])
async def test_huge_and_mixed_notebooks_get_a_suggestion_or_an_empty_answer(fetch_json, cells, cell_index, prefix):
    status, reply = await fetch_json("POST", "llamalab/complete", {
        "cells": cells, "cell_index": cell_index, "prefix": prefix, "language": "python", "max_tokens": 8,
        "explain": True})
    assert status == 200, reply
    assert reply["type"] == "completion" and len(reply["prompt"]) < 20_000


async def test_a_cell_index_outside_the_cells_is_400(fetch_json):
    status, error = await fetch_json("POST", "llamalab/complete", {"prefix": "x", "cells": [{"id": "a"}],
                                                                    "cell_index": 1})
    assert status == 400 and error["message"].startswith("invalid") and "cell_index" in error["message"]
