"""What happens after the last tensor is written: the sha256 taken from the bytes as they are
written (no second read), the bounded read-back, the check that llama.cpp accepts (or runs) the
file, and bf16 values that do not fit f16."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from llamalab.cli.convert_cmd import convert  # noqa: E402
from llamalab.errors import ConfigError, ConversionError  # noqa: E402
from tests.fixtures.meta_checkpoint import Spec, make_weights, train_tokenizer, write_meta_checkpoint  # noqa: E402

SPEC = Spec(dim=64, n_heads=4, n_kv_heads=2)
MB = 1 << 20


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    import sentencepiece as spm

    root = tmp_path_factory.mktemp("checks")
    tokenizer = train_tokenizer(root / "tok")
    weights = make_weights(SPEC, spm.SentencePieceProcessor(model_file=str(tokenizer)).vocab_size())
    return root, tokenizer, weights


@pytest.fixture()
def ckpt(made, tmp_path) -> Path:
    root, tokenizer, weights = made
    folder = root / "llama-2-13b"
    if not folder.exists():
        write_meta_checkpoint(folder, weights, SPEC, 2, tokenizer)
    return Path(shutil.copytree(folder, tmp_path / "src" / "llama-2-13b"))


def run_cli(folder: Path, out: Path, *extra: str) -> None:
    convert.main([str(folder), "--out", str(out), "--accept-license", *extra], standalone_mode=False)


def assert_nothing_left(out: Path, store) -> None:
    assert list(out.parent.iterdir()) == [], list(out.parent.iterdir())
    assert store.list() == []


# -- one pass: the sha256 comes from the writer -------------------------------------------------
def test_registration_uses_the_sha256_taken_while_writing(ckpt, tmp_path, tmp_store, monkeypatch, capsys):
    import llamalab.store

    def no_second_read(*a, **k):
        raise AssertionError("the converted file was read again to hash it")

    monkeypatch.setattr(llamalab.store, "sha256_file", no_second_read)
    out = tmp_path / "out" / "m.gguf"
    run_cli(ckpt, out)
    (model,) = tmp_store.list()
    assert model.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    assert model.path == str(out.resolve())
    assert "checked: llama.cpp loaded m.gguf" in capsys.readouterr().out


def test_quantize_hashes_its_output_once_and_says_how_it_checked(ckpt, tmp_path, tmp_store, capsys):
    from llamalab.cli.convert_cmd import quantize

    f16 = tmp_path / "m.f16.gguf"
    run_cli(ckpt, f16, "--name", "base:f16")
    quantize.main([str(f16), "--type", "Q8_0", "--out", str(tmp_path / "m.q8_0.gguf"), "--check", "structure"],
                  standalone_mode=False)
    model = tmp_store.get("m:q8_0")
    assert model.sha256 == hashlib.sha256((tmp_path / "m.q8_0.gguf").read_bytes()).hexdigest()
    assert "checked without running: llama.cpp loaded the tensor table of m.q8_0.gguf" in capsys.readouterr().out


# -- the bounded read-back ------------------------------------------------------------------------
def test_data_that_reads_back_differently_is_caught(ckpt, tmp_path, tmp_store, monkeypatch):
    """A byte at the end of one tensor changes between the write and the read-back."""
    from llamalab.convert.blockio import TensorStream

    original = TensorStream.finish

    def corrupt(self):
        start, _, end, _ = self.samples[3]
        original(self)
        with open(self.path, "r+b") as handle:
            handle.seek(end - 1)
            byte = handle.read(1)
            handle.seek(end - 1)
            handle.write(bytes([byte[0] ^ 0xFF]))

    monkeypatch.setattr(TensorStream, "finish", corrupt)
    out = tmp_path / "out" / "m.gguf"
    out.parent.mkdir()
    with pytest.raises(ConversionError, match="m.gguf reads back different data for blk.0"):
        run_cli(ckpt, out)
    assert_nothing_left(out, tmp_store)


def test_a_file_llama_cpp_refuses_is_deleted_not_registered(ckpt, tmp_path, tmp_store, monkeypatch):
    """A plan missing one weight writes a self-consistent GGUF; llama.cpp's loader (structural, no
    weight read) refuses it."""
    from llamalab.convert import meta

    original = meta._plan_tensors

    def without_one(*args, **kwargs):
        return [t for t in original(*args, **kwargs) if t.name != "blk.1.ffn_up.weight"]

    monkeypatch.setattr(meta, "_plan_tensors", without_one)
    out = tmp_path / "out" / "m.gguf"
    out.parent.mkdir()
    with pytest.raises(ConversionError) as info:
        run_cli(ckpt, out, "--check", "structure")
    assert "m.gguf does not run: llama.cpp refused to load it" in str(info.value)
    assert "\n" not in str(info.value)
    assert_nothing_left(out, tmp_store)


def test_an_unknown_check_fails_before_any_work(ckpt, tmp_path, tmp_store):
    from llamalab import convert_and_register

    with pytest.raises(ConfigError, match="unknown check 'deep'"):
        convert_and_register(ckpt, out=tmp_path / "m.gguf", check="deep", accept_license=True, store=tmp_store)
    assert not (tmp_path / "m.gguf").exists()


# -- which check ----------------------------------------------------------------------------------
def test_the_check_runs_a_prompt_only_when_the_weights_fit():
    from llamalab.convert.runcheck import memory_bound, plan_check

    small = plan_check(50 * MB, 4 * MB, resident=100 * MB, free=8 << 30, gpu_free=None)
    assert (small.mode, small.gpu_layers) == ("run", 0)
    past_bound = plan_check(2 << 30, 8 * MB, resident=100 * MB, free=64 << 30, gpu_free=None)
    assert past_bound.mode == "structure" and "memory bound" in past_bound.reason
    assert plan_check(memory_bound(8 * MB), 8 * MB, resident=0, free=64 << 30, gpu_free=None).mode == "structure"
    no_ram = plan_check(50 * MB, 4 * MB, resident=100 * MB, free=80 * MB, gpu_free=None)
    assert no_ram.mode == "structure" and "free RAM" in no_ram.reason
    gpu = plan_check(13 << 30, 500 * MB, resident=100 * MB, free=1 << 30, gpu_free=24 << 30)
    assert (gpu.mode, gpu.gpu_layers) == ("run", -1)
    assert plan_check(13 << 30, 500 * MB, mode="run", resident=0, free=0, gpu_free=None).mode == "run"
    assert plan_check(1, 1, mode="structure", resident=0, free=1 << 40, gpu_free=1 << 40).mode == "structure"


def test_an_address_space_limit_counts_as_less_free_memory():
    """A JupyterLab job runs under RLIMIT_AS; the check must not plan to map more than that allows."""
    code = ("import resource; from llamalab.convert.runcheck import available_memory, _proc_kb;"
            "mapped = _proc_kb('/proc/self/status', 'VmSize');"
            "resource.setrlimit(resource.RLIMIT_AS, (mapped + 300 * 2**20, resource.RLIM_INFINITY));"
            "print(available_memory())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert 250 * MB < int(result.stdout) <= 300 * MB


def test_both_checks_on_a_real_file(ckpt, tmp_path, tmp_store):
    from llamalab.convert import convert_checkpoint
    from llamalab.convert.runcheck import check_model

    out = convert_checkpoint(ckpt, tmp_path / "m.gguf", accept_license=True, store=tmp_store)
    events = []
    ran = check_model(out, mode="run", progress=events.append)
    assert ran.mode == "run" and "evaluated a" in ran.summary and "-token prompt" in ran.summary
    assert events[-1].message == ran.summary and events[-1].done == events[-1].total == 1
    structural = check_model(out, mode="structure")
    assert structural.mode == "structure" and "no weight read" in structural.summary


# -- bf16 values beyond f16 -----------------------------------------------------------------------
def test_bf16_values_beyond_f16_fail_naming_the_tensor(made, tmp_path, tmp_store):
    root, tokenizer, weights = made
    big = dict(weights)
    w2 = big["layers.1.feed_forward.w2.weight"].copy()
    w2[3, 5] = 131072.0  # exactly representable in bf16, inf in f16
    big["layers.1.feed_forward.w2.weight"] = w2
    folder = write_meta_checkpoint(tmp_path / "src" / "llama-2-13b", big, SPEC, 2, tokenizer)
    out = tmp_path / "out" / "m.gguf"
    out.parent.mkdir()
    with pytest.raises(ConversionError) as info:
        run_cli(folder, out)
    message = str(info.value)
    assert "layers.1.feed_forward.w2.weight" in message and "--outtype bf16" in message and "\n" not in message
    assert_nothing_left(out, tmp_store)
    run_cli(folder, out, "--outtype", "bf16")  # the suggested way works
    assert tmp_store.get("llama-2-13b:bf16").size_bytes > 0


@pytest.mark.parametrize("value, overflows", [(65504.0, False), (65519.0, False), (65520.0, True),
                                              (-1e6, True), (np.inf, False), (np.nan, False)])
def test_f16_overflow_is_told_apart_from_values_already_infinite(value, overflows):
    """Only a finite value that rounds to inf is an overflow; an inf or NaN already in the source
    is passed on as it is (as before)."""
    from llamalab.convert.source import _convert_into

    raw = np.linspace(-3, 3, 4096, dtype=np.float32).reshape(64, 64)
    raw[10, 20] = value
    dest = np.empty(raw.shape, dtype=np.float16)
    assert _convert_into(dest, raw, "F32", "F16") is overflows
    wide = np.empty((64, 128), dtype=np.float16)  # a column slice, as Meta's row-parallel merges write
    bits = (raw.view(np.uint32) >> 16).astype(np.uint16)
    assert _convert_into(wide[:, 64:], bits, "BF16", "F16") is (overflows and abs(value) > 65536)


# -- 70B readiness: flat memory through the whole command ----------------------------------------
def _peak_rss(command: list[str], env: dict) -> int:
    """Peak RSS in bytes of ``command``, run by a small launcher that reads RUSAGE_CHILDREN: a child
    exec'ed straight from this (large) test process would inherit its high-water mark."""
    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True);"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    result = subprocess.run([sys.executable, "-c", code, *command], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stdout.split()[-1]) * 1024


def test_peak_memory_of_the_whole_command_is_flat_on_a_70b_shaped_checkpoint(tmp_path):
    """Eight shards, GQA 64/8, ffn_dim_multiplier 1.3, multiple_of 4096 at width 512: the model grows
    from 2 to 10 layers (~30 to ~140 MB) while the command's peak RSS must not follow it by even one
    merged tensor (4 MB). (Before source pages were released with a fault-around margin, it grew by
    ~9 MB here: a few pages per shard slice.) ``--check structure`` is what a model past the memory
    bound gets; a model this small would otherwise be loaded and run."""
    import os

    from tests.conftest import REPO
    from tests.fixtures.meta_checkpoint import llama2_70b_shape, meta_shapes, write_random_checkpoint

    tokenizer = train_tokenizer(tmp_path / "tok")
    env = dict(os.environ, PYTHONPATH=str(REPO), LLAMALAB_HOME=str(tmp_path / "home"))
    peaks, sizes = [], []
    for layers in (2, 10):
        spec = llama2_70b_shape(512, layers)
        folder = write_random_checkpoint(tmp_path / f"llama-2-70b-{layers}", spec, 8, tokenizer, 512)
        sizes.append(sum(p.stat().st_size for p in folder.glob("*.pth")))
        out = tmp_path / f"m{layers}.gguf"
        peaks.append(_peak_rss([sys.executable, "-m", "llamalab", "convert", str(folder), "--out", str(out),
                                "--accept-license", "--check", "structure"], env))
        out.unlink()
        shutil.rmtree(folder)
    largest = 2 * max(int(np.prod(s)) for s in meta_shapes(llama2_70b_shape(512, 1), 512).values())
    registry = json.loads((tmp_path / "home" / "registry.json").read_text())
    assert len(registry["models"]) == 2  # registration was part of what was measured
    assert sizes[1] - sizes[0] > 100 * MB  # the model really grew
    assert peaks[1] - peaks[0] < largest, (peaks, sizes)
    assert max(peaks) < 512 * MB + 2 * largest
