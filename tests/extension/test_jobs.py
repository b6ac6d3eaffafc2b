"""The model manager's jobs over REST: converting a tiny checkpoint in Meta's format into the
store (behind the licence gate), quantizing it, one heavy job at a time, cancelling, bad requests."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from tests.fixtures.meta_checkpoint import Spec, make_weights, train_tokenizer, write_meta_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A one-shard Llama checkpoint as Meta's download lays it out (random weights, dim 64)."""
    import sentencepiece as spm

    root = tmp_path_factory.mktemp("meta")
    tokenizer = train_tokenizer(root / "tok")
    spec = Spec()
    weights = make_weights(spec, spm.SentencePieceProcessor(model_file=str(tokenizer)).vocab_size(), seed=1)
    return write_meta_checkpoint(root / "llama-2-tiny", weights, spec, 1, tokenizer)


@pytest.fixture
def llamalab_config(tmp_path):
    return {"store_dir": str(tmp_path / "store"), "n_ctx": 512}


def _events(body: bytes) -> list[dict]:
    return [json.loads(line[len("data: "):]) for line in body.decode().splitlines() if line.startswith("data: ")]


async def _follow(jp_fetch, job_id: str) -> list[dict]:
    """The job's progress events until it ends (the server closes the stream then)."""
    response = await jp_fetch("llamalab", "jobs", job_id, "events", request_timeout=120)
    assert response.headers["Content-Type"].startswith("text/event-stream")
    messages = _events(response.body)
    assert {m["type"] for m in messages} == {"job_progress"} and all(m["job"]["id"] == job_id for m in messages)
    return [m["job"] for m in messages]


async def test_convert_behind_the_licence_gate_then_quantize(fetch_json, jp_fetch, open_chat, checkpoint, extension):
    socket = await open_chat()
    status, error = await fetch_json("POST", "llamalab/convert", {"source": str(checkpoint)})
    assert (status, error["code"]) == (403, "license_required"), error
    assert error["detail"]["license"] == "llama2" and error["detail"]["license_url"].startswith("https://")
    assert "Llama 2 Community License" in error["detail"]["notice"] and "\n" not in error["message"]
    assert not extension.jobs.list()  # nothing started

    status, job = await fetch_json("POST", "llamalab/convert", {"source": str(checkpoint), "accept_license": True})
    assert status == 202 and job["type"] == "job" and job["kind"] == "convert" and job["state"] == "running"
    assert job["model"] == str(checkpoint)
    jobs = await _follow(jp_fetch, job["id"])
    final = jobs[-1]
    assert final["state"] == "done" and final["stored_name"] == "llama-2-tiny:f16" and final["finished_at"]
    assert any(j["stage"].startswith("converting") for j in jobs)
    assert {j["unit"] for j in jobs if j["stage"].startswith("converting")} == {"B"}  # the GGUF's bytes
    pushed = await socket.until(lambda m: m["type"] == "job_progress" and m["job"]["state"] != "running")
    assert pushed[-1]["job"]["id"] == job["id"]  # the chat WebSocket got the same progress
    _, models = await fetch_json("GET", "llamalab/models")
    stored = {m["name"]: m for m in models["stored"]}
    assert stored["llama-2-tiny:f16"]["quantization"] in ("F16", "MOSTLY_F16")

    status, job = await fetch_json("POST", "llamalab/quantize", {"model": "llama-2-tiny:f16", "quant": "q8_0"})
    assert status == 202 and job["kind"] == "quantize" and job["model"] == "llama-2-tiny:f16"
    final = (await _follow(jp_fetch, job["id"]))[-1]
    assert final["state"] == "done" and final["stored_name"] == "llama-2-tiny:q8_0", final
    assert extension.manager.store.find("llama-2-tiny:q8_0").quantization == "Q8_0"
    _, listed = await fetch_json("GET", "llamalab/jobs")
    assert listed["type"] == "jobs" and [j["kind"] for j in listed["jobs"]] == ["convert", "quantize"]
    assert not list(extension.manager.store.root.rglob("*.part"))


async def test_a_converted_and_quantized_job_counts_in_its_steps_unit_not_bytes(fetch_json, jp_fetch, checkpoint):
    """The quantizer reports steps ("it"), not bytes: the job says so, and a manager shows
    "1 of 1" for it rather than "1 B of 1 B"."""
    body = {"source": str(checkpoint), "quant": "q8_0", "name": "tiny-units", "accept_license": True}
    status, job = await fetch_json("POST", "llamalab/convert", body)
    assert status == 202 and job["unit"] == "B"
    jobs = await _follow(jp_fetch, job["id"])
    final = jobs[-1]
    assert final["state"] == "done" and final["stored_name"] == "tiny-units", final
    quantizing = [j for j in jobs if j["stage"].startswith("quantizing")]
    assert quantizing and {j["unit"] for j in quantizing} == {"it"}, jobs
    assert (final["done"], final["total"], final["unit"]) == (1, 1, "it"), final  # the last step's count
    assert any(j["stage"].startswith("converting") and j["unit"] == "B" for j in jobs), jobs


async def test_heavy_jobs_run_one_at_a_time(fetch_json, jp_fetch, checkpoint, extension):
    seen: list[tuple[str, str, str]] = []
    extension.jobs.add_listener(lambda m: seen.append((m.job.id, m.job.stage, m.job.state)))
    body = {"source": str(checkpoint), "accept_license": True}
    _, first = await fetch_json("POST", "llamalab/convert", {**body, "name": "first"})
    _, second = await fetch_json("POST", "llamalab/convert", {**body, "name": "second"})
    assert second["state"] == "running" and second["stage"] == "queued" and second["id"] != first["id"]
    _, again = await fetch_json("POST", "llamalab/convert", {**body, "name": "second"})
    assert again["id"] == second["id"]  # the same request joins the job that does it
    one, two = (await _follow(jp_fetch, first["id"]))[-1], (await _follow(jp_fetch, second["id"]))[-1]
    assert one["state"] == two["state"] == "done" and (one["stored_name"], two["stored_name"]) == ("first", "second")
    assert [j["stage"] for j in await _follow(jp_fetch, second["id"])] == ["done"]  # an ended job: one event
    first_done = seen.index((first["id"], "done", "done"))
    second_works = min(i for i, (job_id, stage, _) in enumerate(seen)
                       if job_id == second["id"] and stage.startswith("converting"))
    assert first_done < second_works, seen


async def test_cancelling_a_conversion_leaves_nothing(fetch_json, jp_fetch, checkpoint, extension, monkeypatch):
    jobs = extension.jobs
    reached, release = threading.Event(), threading.Event()
    update = jobs._update

    def held_update(job_id, **fields):  # hold the conversion in its first progress report
        if fields.get("stage", "").startswith("converting") and fields.get("done") and not reached.is_set():
            reached.set()
            release.wait(30)
        return update(job_id, **fields)

    monkeypatch.setattr(jobs, "_update", held_update)
    _, job = await fetch_json("POST", "llamalab/convert", {"source": str(checkpoint), "accept_license": True})
    deadline = time.monotonic() + 60
    while not reached.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert reached.is_set(), "the conversion did not start"
    store = extension.manager.store
    assert list(store.root.rglob("*.part"))  # half written
    status, cancelling = await fetch_json("DELETE", f"llamalab/jobs/{job['id']}")
    assert status == 200 and cancelling["id"] == job["id"] and cancelling["state"] == "running"
    release.set()
    final = (await _follow(jp_fetch, job["id"]))[-1]
    assert final["state"] == "cancelled" and final["stored_name"] is None and final["error"] is None
    assert not list(store.root.rglob("*.part")) and not list(store.root.rglob("*.gguf"))
    assert store.list() == []
    _, again = await fetch_json("DELETE", f"llamalab/jobs/{job['id']}")
    assert again["state"] == "cancelled"  # cancelling an ended job changes nothing


async def test_cancelling_a_queued_job(fetch_json, jp_fetch, checkpoint, extension, monkeypatch):
    release = threading.Event()
    update = extension.jobs._update

    def held_update(job_id, **fields):
        if fields.get("stage", "").startswith("converting"):
            release.wait(30)
        return update(job_id, **fields)

    monkeypatch.setattr(extension.jobs, "_update", held_update)
    body = {"source": str(checkpoint), "accept_license": True}
    _, first = await fetch_json("POST", "llamalab/convert", {**body, "name": "first"})
    _, second = await fetch_json("POST", "llamalab/convert", {**body, "name": "second"})
    assert second["stage"] == "queued"
    await fetch_json("DELETE", f"llamalab/jobs/{second['id']}")
    final = (await _follow(jp_fetch, second["id"]))[-1]
    assert final["state"] == "cancelled"
    release.set()
    assert (await _follow(jp_fetch, first["id"]))[-1]["state"] == "done"
    assert [m.name for m in extension.manager.store.list()] == ["first"]


@pytest.mark.parametrize("path, body, status, code, words", [
    ("convert", {"source": "/no/such/folder"}, 400, "bad_request", "is not a folder"),
    ("convert", {"source": "."}, 400, "bad_request", "holds neither"),
    ("convert", {"source": "CHECKPOINT", "quant": "Q9_X", "accept_license": True}, 400, "bad_request",
     "unknown quantization type"),
    ("convert", {}, 400, "bad_request", "invalid source"),
    ("convert", {"source": "x", "colour": "red"}, 400, "bad_request", "invalid colour"),
    ("quantize", {"model": "nothing-here", "quant": "Q8_0"}, 404, "model_not_found", "not in the model store"),
    ("quantize", {"model": "x"}, 400, "bad_request", "invalid quant"),
    ("pulls", {"model": "llama-2-7b-chat:q4_k_m"}, 403, "license_required", "accepted first"),
])
async def test_bad_requests_get_one_line_errors(fetch_json, checkpoint, extension, path, body, status, code, words):
    body = {k: (str(checkpoint) if v == "CHECKPOINT" else v) for k, v in body.items()}
    got_status, error = await fetch_json("POST", f"llamalab/{path}", body)
    assert (got_status, error["type"], error["code"]) == (status, "error", code), error
    assert words in error["message"] and "\n" not in error["message"]
    assert not extension.jobs.list()


async def test_unknown_jobs_are_not_found(fetch_json):
    for method in ("GET", "DELETE"):
        status, error = await fetch_json(method, "llamalab/jobs/nosuchjob")
        assert (status, error["code"]) == (404, "not_found")
