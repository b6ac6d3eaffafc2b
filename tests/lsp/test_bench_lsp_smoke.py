"""bench/bench_lsp.py must keep running: a smoke run in --quick mode (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytest.importorskip("pygls")


def test_lsp_benchmark_quick_run_prints_its_table(demo_model, tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "bench_lsp.py"), "--quick", "--max-bursts", "4",
                             "--model", str(demo_model), "--json", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| latency p50 (ms) |" in result.stdout and "re-evaluated after a 1-char edit" in result.stdout
    report = json.loads(out.read_text())
    requests = report["requests"]
    assert len(requests) == 4 and report["summary"]["requests"] == 4
    assert all(r["prompt_tokens"] > 0 and r["lsp_ms"] > 0 and r["direct_ms"] > 0 for r in requests)
    assert all(r["same_text"] for r in requests)  # the direct side really ran the server's generation
    later = [r for r in requests if not r["first"]]
    assert later and all(r["reused_tokens"] > 0 for r in later)  # the KV cache carried over between keystrokes
