"""Issue 13, rows 10-12 through the Jupyter server: the allow-list covers quantize and pulls, URL
pulls refuse loopback with the message a missing host gets, paths stay in the root, and pulls run
two at a time with cancels answered within a second."""

from __future__ import annotations

import time

import pytest

from tests.extension.test_jobs import checkpoint  # noqa: F401  (a module-scoped fixture)
from tests.fixtures.file_server import FileServer
from tests.fixtures.tiny_llama import write_gguf_with_architecture
from tests.fixtures.waiting import job_ended, until


@pytest.fixture
def llamalab_config(demo_model, tmp_path):
    from llamalab import ModelStore

    store = ModelStore(tmp_path / "store")
    for name in ("default", "tiny"):
        store.register(name, demo_model, source="test", sha256="0" * 64)
    return {"store_dir": str(store.root), "n_ctx": 512, "allowed_models": ["default", "tiny", "m"]}


async def test_quantize_cannot_take_an_allowed_or_existing_name(fetch_json, extension, demo_model):
    store = extension.jobs.store
    status, error = await fetch_json("POST", "llamalab/quantize", {"model": "tiny", "quant": "Q8_0", "name": "default"})
    assert (status, error["code"]) == (400, "bad_request") and "already has a model named 'default'" in error["message"]
    status, error = await fetch_json("POST", "llamalab/quantize", {"model": "tiny", "quant": "Q8_0", "name": "other"})
    assert error["code"] == "model_not_allowed" and status == 403, (status, error)
    status, job = await fetch_json("POST", "llamalab/quantize", {"model": "tiny", "quant": "Q8_0"})  # derived name
    assert status == 202
    final = await job_ended(extension.jobs, job["id"])
    assert final.state == "failed" and final.error.code == "model_not_allowed", final
    assert store.get("default").file == demo_model.resolve() and [m.name for m in store.list()] == ["default", "tiny"]
    assert not store.models_dir.exists() or not list(store.models_dir.iterdir())


async def test_quantize_cannot_read_a_stored_model_that_is_not_allowed(fetch_json, extension, demo_model):
    store = extension.jobs.store
    store.register("private", demo_model, source="test", sha256="0" * 64)  # in the store, not on the list
    status, error = await fetch_json("POST", "llamalab/quantize", {"model": "private", "quant": "Q8_0", "name": "m"})
    assert (status, error["code"]) == (403, "model_not_allowed") and "'private'" in error["message"], error
    assert not extension.jobs.list()


async def test_convert_registers_only_allowed_names(fetch_json, extension, checkpoint):  # noqa: F811
    """Issue 15, item 4: the allow-list covers conversions started from JupyterLab as it covers pulls
    and quantizations: a name not on it is refused at once, a derived one (llama-2-tiny:f16) fails the
    job before anything is written, and an allowed name converts."""
    store = extension.jobs.store
    body = {"source": str(checkpoint), "accept_license": True}
    status, error = await fetch_json("POST", "llamalab/convert", {**body, "name": "other"})
    assert (status, error["code"]) == (403, "model_not_allowed") and "'other'" in error["message"], error
    status, error = await fetch_json("POST", "llamalab/convert", {**body, "name": "tiny"})  # allowed, but taken
    assert (status, error["code"]) == (400, "bad_request") and "already has a model named 'tiny'" in error["message"]
    assert not extension.jobs.list()
    status, job = await fetch_json("POST", "llamalab/convert", body)  # the derived name is not on the list
    assert status == 202
    final = await job_ended(extension.jobs, job["id"])
    assert final.state == "failed" and final.error.code == "model_not_allowed", final
    assert "llama-2-tiny:f16" in final.error.message
    assert [m.name for m in store.list()] == ["default", "tiny"]
    assert not store.models_dir.exists() or not list(store.models_dir.iterdir())
    status, job = await fetch_json("POST", "llamalab/convert", {**body, "name": "m"})
    assert status == 202
    final = await job_ended(extension.jobs, job["id"], timeout=120)
    assert final.state == "done" and final.stored_name == "m", final
    assert store.get("m").file.is_file()


async def test_url_pulls_refuse_loopback_like_a_missing_host(fetch_json, extension, tmp_path):
    gguf = write_gguf_with_architecture(tmp_path / "m.gguf", "llama", n_rows=10).read_bytes()
    with FileServer({"m.gguf": gguf}) as files:
        _, refused = await fetch_json("POST", "llamalab/pulls", {"model": f"{files.url}/m.gguf"})
        refused = await job_ended(extension.jobs, refused["id"])
        assert files.ranges == []  # the server never connected
    _, missing = await fetch_json("POST", "llamalab/pulls", {"model": "http://no-such-host.invalid/m.gguf"})
    missing = await job_ended(extension.jobs, missing["id"])
    assert refused.state == missing.state == "failed"
    assert refused.error.message == missing.error.message and refused.error.code == missing.error.code
    assert extension.jobs.store.find("m") is None
    models = extension.jobs.store.models_dir
    assert not models.exists() or not list(models.iterdir())  # no empty folders left


async def test_pulls_by_path_stay_inside_the_root(fetch_json, jp_root_dir, tmp_path):
    outside = write_gguf_with_architecture(tmp_path / "secret.gguf", "llama", n_rows=10)
    (jp_root_dir / "link.gguf").symlink_to(outside)
    answers = []
    for ref in (str(outside), "../" * 12 + str(outside).lstrip("/"), "link.gguf", f"file://{outside}",
                str(tmp_path / "absent.gguf")):
        status, error = await fetch_json("POST", "llamalab/pulls", {"model": ref})
        assert (status, error["code"]) == (404, "model_not_found"), (ref, error)
        answers.append(error["message"].split(" does not exist")[1])
    assert len(set(answers)) == 1  # an existing file outside reads like a missing one


async def test_pulls_run_two_at_a_time_and_cancels_answer_within_a_second(tmp_path, extension):
    from llamalab import ModelStore
    from llamalab.extension.jobs import Jobs
    from llamalab.extension.messages import PullRequest

    gguf = write_gguf_with_architecture(tmp_path / "src.gguf", "llama", n_rows=3000).read_bytes()
    jobs = Jobs(ModelStore(tmp_path / "pulls"), allow_private_addresses=True, max_pulls=2)
    with FileServer({f"{n}.gguf": gguf for n in "abc"}) as files:
        files.pieces, files.pause = 200, 0.3  # each transfer would take a minute
        started = [jobs.start_pull(PullRequest(model=f"{files.url}/{n}.gguf")) for n in "abc"]
        assert [j.stage for j in started] == ["starting", "starting", "queued"]
        await until(lambda: len(files.ranges) >= 2, "two transfers to start", 30)
        assert jobs.get(started[2].id).stage == "queued" and len(files.ranges) == 2
        asked = time.monotonic()
        jobs.cancel(started[0].id)
        first = await job_ended(jobs, started[0].id)
        assert first.state == "cancelled" and time.monotonic() - asked < 1.0
        await until(lambda: len(files.ranges) >= 3, "the queued pull to take the free place", 30)
        asked = time.monotonic()
        jobs.cancel_all()
        ends = [await job_ended(jobs, j.id) for j in started[1:]]
        assert {j.state for j in ends} == {"cancelled"} and time.monotonic() - asked < 1.5
    assert not list(jobs.store.root.rglob("*.part"))
    assert not jobs.store.models_dir.exists() or not list(jobs.store.models_dir.iterdir())
