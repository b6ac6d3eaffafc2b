"""The model manager in a real JupyterLab: the stored models, and a pull from a URL whose job row
shows its progress until the model is in the store (a loopback HTTP server stands in for the Web)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.fixtures.file_server import FileServer
from tests.ui.conftest import Chat, Lab, LabServer

PULLED = "ui-pulled-smollm2"  # the store name a pull of PULLED.gguf gets
CANCELLED = "ui-cancelled-smollm2"
FRESH = "ui-fresh-smollm2"  # pulled while the chat panel is open
CHUNKS = 40  # the file goes out in this many pieces, PAUSE apart, so its progress can be watched
PAUSE = 0.1


@pytest.fixture(scope="module")
def lab_options() -> dict[str, Any]:
    # the pulled model must not show up in the other modules' stores; the test's file server listens on
    # 127.0.0.1, which the server's pulls refuse unless an administrator allows private addresses
    return {"own_store": True, "llamalab": {"allow_private_pull_addresses": True}}


@pytest.fixture(scope="module")
def files_url(demo_model: Path) -> Iterator[str]:
    """The demo model's GGUF under other names, as downloads."""
    body = demo_model.read_bytes()
    with FileServer({f"{name}.gguf": body for name in (PULLED, CANCELLED, FRESH)}) as server:
        server.pieces, server.pause = CHUNKS, PAUSE
        yield server.url


def ensure_stored(server: LabServer, url: str, name: str) -> None:
    """Pull ``url`` through the REST API unless the store has ``name`` (tests stay independent)."""
    if name in [m["name"] for m in server.api("llamalab/models")["stored"]]:
        return
    job = server.api("llamalab/pulls", "POST", {"model": url})
    deadline = time.monotonic() + 60
    while job["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
        job = server.api(f"llamalab/jobs/{job['id']}")
    assert job["state"] == "done", job


def open_manager(lab: Lab) -> Any:
    lab.command("llamalab:open-model-manager")
    manager = lab.page.locator("#llamalab-model-manager")
    manager.wait_for(state="visible")
    return manager


def test_manager_lists_the_stored_demo_model(lab: Lab) -> None:
    manager = open_manager(lab)
    row = manager.locator('[data-testid="llamalab-stored-model"][data-model="smollm2-135m-instruct:q4_1"]')
    row.wait_for(state="visible", timeout=30_000)
    assert manager.get_by_test_id("llamalab-catalog-model").count() >= 1, "the catalog is not shown"
    manager.get_by_test_id("llamalab-hardware").wait_for(state="visible", timeout=30_000)
    lab.shot("manager", manager)


def test_pull_a_model_with_progress(lab: Lab, files_url: str) -> None:
    manager = open_manager(lab)
    manager.get_by_test_id("llamalab-pull-input").fill(f"{files_url}/{PULLED}.gguf")
    manager.get_by_test_id("llamalab-pull-button").click()
    job = manager.locator('[data-testid="llamalab-job"][data-kind="pull"]').last
    job.wait_for(state="visible", timeout=15_000)
    seen: list[tuple[str, Any]] = []
    deadline = time.monotonic() + 60
    shot_running = False
    while time.monotonic() < deadline:
        state = job.get_attribute("data-state")
        progress = job.locator("progress")
        value = progress.first.get_attribute("value") if progress.count() else None
        if not seen or seen[-1] != (state, value):
            seen.append((state, value))
        if state == "running" and value not in (None, "0") and not shot_running:
            lab.shot("pulling", manager)
            shot_running = True
        if state in ("done", "failed", "cancelled"):
            break
        time.sleep(0.05)
    error = manager.get_by_test_id("llamalab-manager-error")
    assert seen[-1][0] == "done", f"the pull ended as {seen[-1]} ({error.all_inner_texts()}); states {seen}"
    running = [float(v) for s, v in seen if s == "running" and v not in (None, "")]
    assert any(0 < v < float(job.locator('progress').first.get_attribute('max') or 1) for v in running), (
        f"no progress between start and end was shown: {seen}")
    row = manager.locator(f'[data-testid="llamalab-stored-model"][data-model="{PULLED}"]')
    row.wait_for(state="visible", timeout=15_000)
    stored = [m["name"] for m in lab.server.api("llamalab/models")["stored"]]
    assert PULLED in stored, stored
    assert row.get_attribute("data-loaded") != "true"
    lab.page.wait_for_timeout(500)  # the manager refreshes its other sections after a pull
    assert error.count() == 0 or not error.first.is_visible(), f"the manager shows an error: {error.all_inner_texts()}"
    lab.shot("pulled", manager)


def test_a_model_pulled_in_the_manager_is_in_the_chat_picker(lab: Lab, files_url: str) -> None:
    """The chat panel lists the store again when a job is done (its job_progress arrives on the
    chat WebSocket), so the picker offers the new model without pressing its refresh button."""
    chat = Chat(lab).open()
    picker = lab.page.get_by_test_id("llamalab-model-picker")
    picker.locator('option[value="smollm2-135m-instruct:q4_1"]').wait_for(state="attached", timeout=30_000)
    assert picker.locator(f'option[value="{FRESH}"]').count() == 0
    # Opening the panel focuses its input once rendered and keeps it there for 600 ms (ChatPanel.focusInput):
    # let that pass, so the typing below stays in the manager.
    lab.page.wait_for_function(
        "() => document.activeElement && document.activeElement.getAttribute('data-testid') === 'llamalab-chat-input'",
        timeout=10_000)
    lab.page.wait_for_timeout(800)
    manager = open_manager(lab)
    pull_input = manager.get_by_test_id("llamalab-pull-input")
    pull_input.fill(f"{files_url}/{FRESH}.gguf")
    assert pull_input.input_value() == f"{files_url}/{FRESH}.gguf"
    manager.get_by_test_id("llamalab-pull-button").click()
    manager.locator(f'[data-testid="llamalab-stored-model"][data-model="{FRESH}"]').wait_for(timeout=60_000)
    chat.open()
    picker.locator(f'option[value="{FRESH}"]').wait_for(state="attached", timeout=10_000)
    lab.shot("picker-after-pull")


def test_cancel_a_pull(lab: Lab, files_url: str) -> None:
    manager = open_manager(lab)
    manager.get_by_test_id("llamalab-pull-input").fill(f"{files_url}/{CANCELLED}.gguf")
    manager.get_by_test_id("llamalab-pull-button").click()
    job = manager.locator(f'[data-testid="llamalab-job"][data-kind="pull"]:has-text("{CANCELLED}")').last
    job.wait_for(state="visible", timeout=15_000)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until some bytes have come
        value = job.locator("progress").first.get_attribute("value") if job.locator("progress").count() else None
        if value not in (None, "", "0") and float(value) > 0:
            break
        time.sleep(0.05)
    assert job.get_attribute("data-state") == "running", job.get_attribute("data-state")
    job.get_by_test_id("llamalab-job-cancel").click()
    deadline = time.monotonic() + 10
    while job.get_attribute("data-state") == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.get_attribute("data-state") == "cancelled", job.get_attribute("data-state")
    assert job.get_by_test_id("llamalab-job-cancel").count() == 0, "a cancelled job still offers Cancel"
    lab.shot("cancelled", manager)
    lab.page.wait_for_timeout(1000)  # the download must not finish behind the user's back
    stored = [m["name"] for m in lab.server.api("llamalab/models")["stored"]]
    assert CANCELLED not in stored, stored
    assert manager.locator(f'[data-testid="llamalab-stored-model"][data-model="{CANCELLED}"]').count() == 0


def test_a_llama_2_pull_asks_for_the_licence_first(lab: Lab) -> None:
    manager = open_manager(lab)
    row = manager.locator('[data-testid="llamalab-catalog-model"][data-model="llama-2-7b-chat"]')
    row.wait_for(state="visible", timeout=30_000)
    jobs_before = len(lab.server.api("llamalab/jobs")["jobs"])
    row.get_by_test_id("llamalab-catalog-pull").click()
    gate = manager.get_by_test_id("llamalab-license-gate")
    gate.wait_for(state="visible", timeout=15_000)
    assert "llama2" in gate.inner_text().lower().replace(" ", "").replace("-", ""), gate.inner_text()
    assert manager.get_by_test_id("llamalab-accept-license").is_visible()
    lab.shot("licence-gate", manager)
    assert len(lab.server.api("llamalab/jobs")["jobs"]) == jobs_before, "a job started before the licence was accepted"
    gate.get_by_role("button", name="Cancel").click()
    gate.wait_for(state="detached", timeout=5000)
    assert len(lab.server.api("llamalab/jobs")["jobs"]) == jobs_before


def test_a_pulled_model_answers_in_the_chat(lab: Lab, files_url: str) -> None:
    ensure_stored(lab.server, f"{files_url}/{PULLED}.gguf", PULLED)
    chat = Chat(lab).open()
    picker = lab.page.get_by_test_id("llamalab-model-picker")
    # The refresh button re-reads the store (a finished job does too, tested above).
    chat.panel.get_by_role("button", name="Refresh the model list").click()
    picker.locator(f'option[value="{PULLED}"]').wait_for(state="attached", timeout=15_000)
    picker.select_option(PULLED)
    lab.page.wait_for_function(
        "(name) => { const s = document.querySelector('[data-testid=\"llamalab-model-picker\"]');"
        " return s && !s.disabled && s.value === name; }", arg=PULLED, timeout=60_000)
    before = chat.send("Say hello.")
    answer = chat.wait_finished(before, timeout=90)
    assert answer.get_attribute("data-finish-reason") in ("stop", "length")
    assert PULLED in answer.locator(".llamalab-message-author").inner_text()
    loaded = lab.server.api("llamalab/models")["loaded"]
    assert loaded and loaded["name"] == PULLED, loaded
    lab.shot("picked-model")


@pytest.fixture(scope="module")
def meta_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-shard Llama checkpoint laid out as Meta's download (random weights, dim 64)."""
    spm = pytest.importorskip("sentencepiece")
    pytest.importorskip("torch")
    from tests.fixtures.meta_checkpoint import Spec, make_weights, train_tokenizer, write_meta_checkpoint

    root = tmp_path_factory.mktemp("meta")
    tokenizer = train_tokenizer(root / "tok")
    spec = Spec()
    weights = make_weights(spec, spm.SentencePieceProcessor(model_file=str(tokenizer)).vocab_size(), seed=1)
    return write_meta_checkpoint(root / "llama-2-tiny", weights, spec, 1, tokenizer)


def test_convert_a_meta_checkpoint_behind_the_licence_gate(lab: Lab, meta_checkpoint: Path) -> None:
    manager = open_manager(lab)
    manager.get_by_test_id("llamalab-convert-source").fill(str(meta_checkpoint))
    manager.get_by_test_id("llamalab-convert-quant").select_option("Q8_0")
    manager.get_by_test_id("llamalab-convert-name").fill("ui-converted")
    jobs_before = {j["id"] for j in lab.server.api("llamalab/jobs")["jobs"]}
    manager.get_by_test_id("llamalab-convert-button").click()
    gate = manager.get_by_test_id("llamalab-license-gate")
    gate.wait_for(state="visible", timeout=15_000)
    assert not {j["id"] for j in lab.server.api("llamalab/jobs")["jobs"]} - jobs_before, "converting before the licence"
    manager.get_by_test_id("llamalab-accept-license").click()
    gate.wait_for(state="detached", timeout=10_000)
    job = manager.locator('[data-testid="llamalab-job"][data-kind="convert"]').last
    job.wait_for(state="visible", timeout=15_000)
    lab.shot("converting", manager)
    deadline = time.monotonic() + 120
    while job.get_attribute("data-state") == "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    error = manager.get_by_test_id("llamalab-manager-error")
    assert job.get_attribute("data-state") == "done", (job.inner_text(), error.all_inner_texts())
    # Its last step, llama.cpp's quantizer, counts steps, not bytes.
    assert "1 of 1" in job.inner_text() and " B of " not in job.inner_text(), job.inner_text()
    new = [j for j in lab.server.api("llamalab/jobs")["jobs"] if j["id"] not in jobs_before]
    assert len(new) == 1 and new[0]["kind"] == "convert", new
    name = new[0]["stored_name"]
    assert name and name.startswith("ui-converted"), new[0]
    row = manager.locator(f'[data-testid="llamalab-stored-model"][data-model="{name}"]')
    row.wait_for(state="visible", timeout=15_000)
    assert "Q8_0" in row.inner_text(), row.inner_text()
    lab.shot("converted", manager)
