"""The engine benchmark must keep running (a smoke run, no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO


def test_engine_benchmark_quick_run_prints_its_table(demo_model, tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "bench_engine.py"), "--quick", "--runs", "1",
                             "--max-tokens", "8", "--model", str(demo_model), "--json", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "llamalab/direct" in result.stdout and "decode tok/s" in result.stdout
    data = json.loads(out.read_text())
    runs = data["runs"] if "runs" in data else data
    assert runs, data


def test_conversion_benchmark_dry_run(tmp_path):
    """bench_convert.py --quick: tiny 8-shard checkpoints through the legacy converter, llamalab's
    conversion stage and the whole `llamalab convert` command; table and check lines printed."""
    out = tmp_path / "runs.json"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "bench_convert.py"), "--quick",
                             "--work", str(tmp_path / "work"), "--json", str(out)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cli x" in result.stdout and "legacy GB/s" in result.stdout and "stage GB/s" in result.stdout
    assert "1L: checked" in result.stdout, result.stdout
    runs = json.loads(out.read_text())
    assert {r["side"] for r in runs} == {"legacy", "stage", "cli"}
    assert all(r["returncode"] == 0 and r["output_bytes"] > 0 and r["flush_seconds"] >= 0 for r in runs)
    assert "durable" in result.stdout
