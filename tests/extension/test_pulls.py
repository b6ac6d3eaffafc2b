"""Pull jobs over REST: a real download from a loopback server into a private store."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.file_server import FileServer
from tests.fixtures.tiny_llama import write_gguf_with_architecture


@pytest.fixture
def llamalab_config(tmp_path, demo_model):
    # the test file servers listen on 127.0.0.1, which the server refuses unless allowed
    return {"store_dir": str(tmp_path / "store"), "n_ctx": 1024, "allow_private_pull_addresses": True}


async def test_pull_job_reports_progress_then_registers_the_model(fetch_json, jp_fetch, tmp_path, extension):
    gguf = write_gguf_with_architecture(tmp_path / "src.gguf", "llama", n_rows=3000).read_bytes()  # ~3 MB
    with FileServer({"tiny.gguf": gguf}) as files:
        status, job = await fetch_json("POST", "llamalab/pulls", {"model": f"{files.url}/tiny.gguf"})
        assert status == 202 and job["type"] == "job" and job["kind"] == "pull" and job["state"] == "running"
        events = await jp_fetch("llamalab", "pulls", job["id"], "events")  # SSE until the job ends
    assert events.headers["Content-Type"].startswith("text/event-stream")
    jobs = [json.loads(line[len("data: "):])["job"] for line in events.body.decode().splitlines()
            if line.startswith("data: ")]
    assert jobs[-1]["state"] == "done" and jobs[-1]["stored_name"] == "tiny" and jobs[-1]["fraction"] == 1.0
    assert all(j["id"] == job["id"] for j in jobs)
    assert {j["unit"] for j in jobs} == {"B"}, jobs  # a download and its hash count bytes
    assert any(j["unit"] == "B" and j["total"] == len(gguf) and 0 < j["done"] for j in jobs), jobs
    status, final = await fetch_json("GET", f"llamalab/pulls/{job['id']}")
    assert final["state"] == "done"
    _, listed = await fetch_json("GET", "llamalab/pulls")
    assert [j["id"] for j in listed["jobs"]] == [job["id"]]
    _, models = await fetch_json("GET", "llamalab/models")
    assert [m["name"] for m in models["stored"]] == ["tiny"]
    assert extension.manager.store.find("tiny").size_bytes == len(gguf)


async def test_failed_pull_is_a_failed_job_with_a_one_line_error(fetch_json, jp_fetch):
    with FileServer({}) as files:
        _, job = await fetch_json("POST", "llamalab/pulls", {"model": f"{files.url}/missing.gguf"})
        await jp_fetch("llamalab", "pulls", job["id"], "events")
    _, final = await fetch_json("GET", f"llamalab/pulls/{job['id']}")
    assert final["state"] == "failed" and final["error"]["code"] == "engine_error"
    assert "404" in final["error"]["message"]


async def test_pulling_a_path_on_the_server_registers_the_file_in_place(fetch_json, jp_fetch, jp_root_dir, extension):
    absolute = write_gguf_with_architecture(jp_root_dir / "abs-model.gguf", "llama", n_rows=3000)  # ~3 MB
    (jp_root_dir / "models").mkdir()
    write_gguf_with_architecture(jp_root_dir / "models" / "rel-model.gguf", "llama", n_rows=10)
    for ref, name in ((str(absolute), "abs-model"), ("models/rel-model.gguf", "rel-model")):  # relative: the root's
        status, job = await fetch_json("POST", "llamalab/pulls", {"model": ref})
        assert status == 202 and job["kind"] == "pull" and job["model"] == name, job
        events = await jp_fetch("llamalab", "pulls", job["id"], "events")
        jobs = [json.loads(line[len("data: "):])["job"] for line in events.body.decode().splitlines()
                if line.startswith("data: ")]
        assert jobs[-1]["state"] == "done" and jobs[-1]["stored_name"] == name, jobs[-1]
        if name == "abs-model":  # the sha256 pass is the progress
            assert any(j["stage"] == "hashing" and j["done"] == absolute.stat().st_size for j in jobs), jobs
    _, models = await fetch_json("GET", "llamalab/models")
    stored = {m["name"]: m for m in models["stored"]}
    assert stored["abs-model"]["path"] == str(absolute.resolve())
    assert stored["rel-model"]["path"] == str((jp_root_dir / "models" / "rel-model.gguf").resolve())
    assert not list(extension.manager.store.root.rglob("*.gguf"))  # registered where they are
    status, error = await fetch_json("POST", "llamalab/pulls", {"model": str(jp_root_dir / "missing.gguf")})
    assert status == 404 and error["code"] == "model_not_found" and "does not exist" in error["message"]
