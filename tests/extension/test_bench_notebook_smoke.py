"""The notebook benchmark must keep running: a real Jupyter server, ghost text typed into a
short and a 40-cell notebook, old requests and new (a smoke run, no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO, TEST_HOME


def test_notebook_benchmark_quick_run_prints_its_table(demo_model, tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "bench_notebook.py"), "--quick", "--keystrokes",
                             "12", "--model", str(demo_model), "--home", str(TEST_HOME), "--json", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for row in ("| short | new |", "| 40 cells | new |", "| short | old |", "| 40 cells | old |"):
        assert any(line.startswith(row) for line in result.stdout.splitlines()), (row, result.stdout)
    assert "new: p50 40 cells / short" in result.stdout and "median re-evaluated" in result.stdout
    data = json.loads(out.read_text())
    sessions = {(s["notebook"], s["side"]): s for s in data["sessions"]}
    assert len(sessions) == 4
    for session in sessions.values():
        assert session["keystrokes"] == 12
        assert len(session["latencies_ms"]) + session["type_ahead"] == 12
    assert sessions[("40 cells", "old")]["type_ahead"] == 0  # the old front end had none
    # the new layout keeps the 40-cell prompt's start: each keystroke re-evaluates little of it
    assert max(sessions[("40 cells", "new")]["reevaluated"][1:]) < 0.5, sessions[("40 cells", "new")]
