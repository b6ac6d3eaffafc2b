"""Cancelling long steps through their ``cancel`` event: a pull stops within a chunk, the
quantizer's child process is terminated, and neither leaves a partial file behind."""

from __future__ import annotations

import threading
import time

import pytest

from llamalab import LicenseNotAcceptedError, OperationCancelledError, pull
from llamalab.progress import Progress, cancellable
from tests.fixtures.file_server import FileServer
from tests.fixtures.tiny_llama import train_sentencepiece, write_gguf_with_architecture, write_tiny_llama_gguf


def test_cancellable_progress_raises_once_set_but_lets_the_final_report_through():
    cancel, seen = threading.Event(), []
    report = cancellable(seen.append, cancel)
    report(Progress("step", 1, 10))
    cancel.set()
    with pytest.raises(OperationCancelledError, match="cancelled"):
        report(Progress("step", 2, 10))
    report(Progress("step", 10, 10))  # the step is complete: it may finish
    assert [p.done for p in seen] == [1, 10]
    assert cancellable(None, None) is None


def test_a_cancelled_pull_deletes_its_part_file(tmp_store, tmp_path):
    gguf = write_gguf_with_architecture(tmp_path / "src.gguf", "llama", n_rows=3000).read_bytes()  # ~3 MB
    cancel, reports = threading.Event(), []

    def progress(p: Progress) -> None:
        reports.append(p)
        if p.done > 0:
            cancel.set()

    with FileServer({"tiny.gguf": gguf}) as files:
        with pytest.raises(OperationCancelledError):
            pull(f"{files.url}/tiny.gguf", store=tmp_store, progress=progress, cancel=cancel)
    assert reports and reports[-1].done < len(gguf)
    assert not list(tmp_store.root.rglob("*.part")) and not list(tmp_store.root.rglob("*.gguf"))
    assert tmp_store.find("tiny") is None


def test_a_cancelled_quantization_terminates_the_quantizer(tmp_path, monkeypatch):
    import subprocess

    from llamalab import quantize as quantize_module

    tokenizer = train_sentencepiece(tmp_path / "tok")
    src = write_tiny_llama_gguf(tmp_path / "tiny.f32.gguf", tokenizer)
    children = []
    popen = subprocess.Popen

    def recording(*args, **kwargs):
        child = popen(*args, **kwargs)
        children.append(child)
        cancel.set()  # the quantizer has just started: stop it
        return child

    monkeypatch.setattr(quantize_module.subprocess, "Popen", recording)
    cancel = threading.Event()
    started = time.monotonic()
    with pytest.raises(OperationCancelledError, match="quantization"):
        quantize_module.quantize_gguf(src, tmp_path / "tiny.q8_0.gguf", "Q8_0", cancel=cancel)
    assert time.monotonic() - started < 10
    assert len(children) == 1 and children[0].returncode is not None and children[0].returncode != 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.f32.gguf", "tok"]


def test_quantizing_in_a_child_process_gives_the_same_file(tmp_path):
    from llamalab.gguf_info import read_gguf_info
    from llamalab.quantize import quantize_gguf

    tokenizer = train_sentencepiece(tmp_path / "tok")
    src = write_tiny_llama_gguf(tmp_path / "tiny.f32.gguf", tokenizer)
    here = quantize_gguf(src, tmp_path / "here.gguf", "Q8_0")
    child = quantize_gguf(src, tmp_path / "child.gguf", "Q8_0", cancel=threading.Event())
    assert here.read_bytes() == child.read_bytes()
    assert read_gguf_info(child).quantization == "Q8_0"


def test_licence_errors_name_the_licence(tmp_store):
    from llamalab import require_license

    with pytest.raises(LicenseNotAcceptedError) as refused:
        require_license("llama2", store=tmp_store)
    assert refused.value.license == "llama2" and refused.value.license_url.startswith("https://")
