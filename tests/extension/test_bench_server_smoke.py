"""The server benchmark must keep running: a real Jupyter server, its routes against
LocalEngine, and the memory check (a smoke run, no timing assertions)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from tests.conftest import REPO, TEST_HOME

SIDES = ("direct", "websocket", "openai-sse")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def test_server_benchmark_quick_run_prints_its_tables(demo_model, tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "bench_server.py"), "--quick",
                             "--model", str(demo_model), "--home", str(TEST_HOME), "--json", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    for row in (*SIDES, "websocket/direct", "openai-sse/direct", "server, model unloaded",
                "added by the model, three consumers", "kernel before -> after %%llama"):
        assert any(line.startswith(row + " ") for line in lines), (row, result.stdout)
    assert "decode tok/s" in result.stdout and "TTFT ms" in result.stdout

    data = json.loads(out.read_text())
    for side in SIDES:
        summary = data["summary"][side]
        assert summary["runs"] == 3
        for key in ("median_decode_tok_s", "median_ttft_ms", "min_ttft_ms", "max_ttft_ms"):
            assert _number(summary[key]), (side, key, summary)
        assert summary["pieces"] and all(n > 1 for n in summary["pieces"]), summary
    for side in SIDES[1:]:
        assert _number(data["compare"][side]["throughput_ratio"]) and _number(data["compare"][side]["ttft_diff_ms"])
    assert {s["side"] for s in data["samples"]} == set(SIDES)
    assert all(_number(s["ttft_s"]) and _number(s["decode_tok_s"]) for s in data["samples"])

    memory = data["memory"]
    for key in ("unloaded", "chat", "magic", "completion"):
        assert _number(memory["server_rss_bytes"][key]), memory
    assert _number(memory["server_added_bytes"]) and _number(memory["model_file_bytes"])
    assert memory["server_loads_for_the_three"] == 1, memory
    kernel = memory["kernel"]
    assert kernel["answer"].strip()  # %%llama answered in the kernel through the server
    assert not kernel["llama_cpp_imported"] and not kernel["model_maps"], kernel
