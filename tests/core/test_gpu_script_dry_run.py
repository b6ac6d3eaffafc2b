"""The one-call GPU benchmark (bench/gpu) must keep running: its CPU dry run, tiny shapes.

No timing assertions: the table and the JSON must exist and hold numbers.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_bench_cpu_dry_run(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, TMPDIR=str(tmp_path))
    result = subprocess.run(["bash", str(REPO / "bench" / "gpu" / "run.sh"), "--cpu"], env=env,
                            capture_output=True, text=True, timeout=300, cwd=str(REPO))
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "llamalab/direct tg" in result.stdout and "pp64 t/s" in result.stdout and "tg16 t/s" in result.stdout
    assert "simultaneous streams" in result.stdout and "aggregate t/s" in result.stdout

    table = (out / "table.txt").read_text()
    assert "Q4_K_M" in table and "Q8_0" in table and "targets:" in table
    assert "per-stream t/s" in table and "aggregate at 8 streams >= 4x single-stream" in table
    stream_rows = [line.split() for line in table.splitlines() if line.split()[:1] in (["Q4_K_M"], ["Q8_0"])
                   and len(line.split()) == 7]
    assert [(row[0], row[1]) for row in stream_rows] == [(q, n) for q in ("Q4_K_M", "Q8_0") for n in ("1", "4", "8")]
    assert all(float(row[2]) > 0 and float(row[3]) > 0 for row in stream_rows)  # aggregate, per-stream t/s
    assert (out / "bench.log").stat().st_size > 0

    data = json.loads((out / "gpu_bench.json").read_text())
    assert data["meta"]["shape"] == "tiny" and data["meta"]["bandwidth"]["bytes_per_s"] > 0
    assert [r["quant"] for r in data["results"]] == ["Q4_K_M", "Q8_0"]
    for r in data["results"]:
        assert r["layers_offloaded"] == 0 and r["total_layers"] == 3
        assert r["tg_bound_tps"] > 0 and math.isfinite(r["tg_ratio"]) and r["tg_ratio"] > 0
        for side in ("llamalab", "direct"):
            s = r["sides"][side]
            assert math.isfinite(s["pp_tps"]) and s["pp_tps"] > 0
            assert math.isfinite(s["tg_tps"]) and s["tg_tps"] > 0
        runs = r["runs"]
        assert len(runs) == 4
        assert all(x["tg_tokens"] == 16 and x["prompt_tokens"] == 65 for x in runs)  # no early EOS, 64 + BOS

        streams = r["streams"]
        assert streams["n_parallel"] == 8 and streams["kv_size"] >= 8 * (streams["prompt_tokens"] + 16)
        assert [x["streams"] for x in streams["rows"]] == [1, 4, 8]
        for x in streams["rows"]:
            assert math.isfinite(x["aggregate_tps"]) and x["aggregate_tps"] > 0
            assert math.isfinite(x["per_stream_tps"]) and x["per_stream_tps"] > 0
            assert x["tokens"] == 16 * x["streams"] and x["vs_single"] > 0
        assert len(streams["runs"]) == 3 * 2
        assert all(x["tokens_per_stream"] == [16] * x["streams"] for x in streams["runs"])  # every stream ran to the end
