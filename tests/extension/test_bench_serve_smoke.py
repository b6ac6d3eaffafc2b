"""The team-server benchmark must keep running: `llamalab serve` (and llama-server when built)
under 1 and 2 clients, and the fairness round (a smoke run, no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO, TEST_HOME
from tests.fixtures.llama_server import find_binary


def test_serve_benchmark_quick_run_prints_its_tables(demo_model, tmp_path):
    out = tmp_path / "bench.json"
    sides = "llamalab,llama-server" if find_binary() else "llamalab"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "bench_serve.py"), "--quick", "--threads", "1",
                             "--model", str(demo_model), "--home", str(TEST_HOME), "--sides", sides,
                             "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "| 2 | llamalab serve |" in result.stdout and "fairness: B's first token" in result.stdout
    data = json.loads(out.read_text())
    rounds = data["llamalab serve"]["rounds"]
    assert [r["clients"] for r in rounds] == [1, 2] and len(rounds[1]["samples"]) == 2
    assert all(s["pieces"] >= 1 and s["first_token_s"] > 0 for r in rounds for s in r["samples"])
    assert data["llamalab serve"]["fairness"]["ratio"] > 0
    if "llama-server" in sides:
        assert "throughput llamalab/llama-server" in result.stdout and len(data["llama-server"]["rounds"]) == 2
