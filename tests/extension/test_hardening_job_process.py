"""Issue 13, deliverable 4: conversions and quantizations started from JupyterLab run in a child
process with a memory ceiling; a job that asks for more fails with a clear message while the
server keeps serving, and a cancel kills a stuck child (and its files) within a second."""

from __future__ import annotations

import os
import threading
import time

import pytest

from llamalab import ConfigError
from llamalab.progress import report
from tests.extension.test_jobs import checkpoint, llamalab_config  # noqa: F401  (fixtures)
from tests.fixtures.waiting import job_ended, job_reached

HERE = "tests.extension.test_hardening_job_process"


# -- work the child runs (imported there by name) ---------------------------------------------
def hog(*, store, progress, cancel, mb: int) -> str:
    report(progress, "hogging", 0, 1, message=f"pid {os.getpid()}", unit="it")
    held = bytearray(mb * 1024 * 1024)  # past the ceiling: MemoryError in the child
    return str(len(held))


def stuck(*, store, progress, cancel, name: str) -> str:
    folder = store.model_dir(name)  # told to the server before anything is written
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "stuck.gguf.part").write_bytes(b"half")
    report(progress, "stuck", 0, 1, message=f"pid {os.getpid()}", unit="it")
    time.sleep(120)  # one long call that never reports: only killing it ends it
    raise ConfigError("not reached")


# -- the server ----------------------------------------------------------------------------------
# the checkpoint and the server's config: the same as tests/extension/test_jobs.py's (imported above)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_conversion_and_quantization_run_in_a_child_process(fetch_json, checkpoint, extension, monkeypatch):  # noqa: F811
    jobs = extension.jobs
    seen: dict[str, set] = {}
    update = jobs._update

    def watching_update(job_id, **fields):
        if fields.get("stage", "").startswith(("converting", "quantizing")):
            seen.setdefault(job_id, set()).add(jobs.worker_pid(job_id))
        return update(job_id, **fields)

    monkeypatch.setattr(jobs, "_update", watching_update)
    body = {"source": str(checkpoint), "name": "tiny", "accept_license": True}
    status, job = await fetch_json("POST", "llamalab/convert", body)
    assert status == 202
    final = await job_ended(jobs, job["id"], timeout=120)
    assert final.state == "done" and final.stored_name == "tiny", final
    pids = seen[job["id"]]
    assert len(pids) == 1 and None not in pids and os.getpid() not in pids, pids
    assert _gone(pids.pop()) and jobs.worker_pid(job["id"]) is None  # the child has ended
    assert extension.manager.store.get("tiny").file.is_file()  # registered where the server sees it

    status, job = await fetch_json("POST", "llamalab/quantize", {"model": "tiny", "quant": "q8_0", "name": "q8"})
    assert status == 202
    final = await job_ended(jobs, job["id"], timeout=120)
    assert final.state == "done" and extension.manager.store.get("q8").quantization == "Q8_0", final
    assert seen[job["id"]] and os.getpid() not in seen[job["id"]] and None not in seen[job["id"]]
    assert not list(extension.manager.store.root.rglob("*.part"))


async def test_a_job_past_the_memory_ceiling_fails_clearly_and_the_server_goes_on(fetch_json, extension, monkeypatch):
    jobs = extension.jobs
    monkeypatch.setattr(jobs, "_memory_mb", 256)
    job = jobs.start_in_child("convert", "hog", f"{HERE}:hog", {"mb": 2048}, inputs=[], key=("hog",))
    final = await job_ended(jobs, job.id)
    assert final.state == "failed" and final.error is not None, final
    message = final.error.message
    assert "needed more than 256 MB" in message and "job_memory_mb" in message and "\n" not in message, message
    assert final.message.startswith("pid ") and int(final.message.split()[1]) != os.getpid()  # its last report
    status, models = await fetch_json("GET", "llamalab/models")  # the server still serves
    assert status == 200 and models["stored"] == []


async def test_cancel_kills_a_stuck_child_and_its_files_within_a_second(fetch_json, extension):
    jobs, store = extension.jobs, extension.jobs.store
    job = jobs.start_in_child("convert", "stuck", f"{HERE}:stuck", {"name": "stuck"}, inputs=[], key=("stuck",))
    running = await job_reached(jobs, job.id, "stuck")
    pid = int(running.message.split()[1])
    assert pid != os.getpid() and pid == jobs.worker_pid(job.id)
    assert list(store.model_dir("stuck").iterdir())  # half written
    asked = time.monotonic()
    status, _ = await fetch_json("DELETE", f"llamalab/jobs/{job.id}")
    assert status == 200
    final = await job_ended(jobs, job.id, timeout=30)
    took = time.monotonic() - asked
    assert final.state == "cancelled" and took < 1.5, (final, took)
    assert _gone(pid) and not store.model_dir("stuck").exists()
    status, _ = await fetch_json("GET", "llamalab/models")
    assert status == 200


def test_a_worker_that_reports_cancel_ends_cancelled(tmp_path):
    """A cancel seen during a report reaches a step that never checks it: the worker is killed
    after the grace period and the folder it announced is removed."""
    from llamalab import ModelStore, OperationCancelledError
    from llamalab.extension.job_worker import run_in_child

    cancel = threading.Event()
    reports = []

    def progress(p):
        reports.append(p)
        cancel.set()

    with pytest.raises(OperationCancelledError):
        run_in_child({"call": f"{HERE}:stuck", "kwargs": {"name": "x"}, "inputs": [], "store_root": str(tmp_path)},
                     kind="convert", memory_mb=512, progress=progress, cancel=cancel, allowed=lambda name: True,
                     store=ModelStore(tmp_path), grace=0.5)
    assert reports and reports[0].stage == "stuck"
    assert not (tmp_path / "models" / "x").exists()
