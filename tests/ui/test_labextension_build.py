"""The JupyterLab front end as a package: its TypeScript unit tests, its wire types against the
server's pydantic schema, and the built extension that the Python build ships."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "labextension"

pytestmark = pytest.mark.skipif(shutil.which("npm") is None,
                                reason="npm is not installed: scripts/test.sh installs Node.js's npm on Debian")


def npm(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    if not (PKG / "node_modules").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=PKG, check=True)
    return subprocess.run(["npm", *args], cwd=PKG, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env})


def test_typescript_unit_tests_pass() -> None:
    result = npm("test", "--silent")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    counts = re.search(r"Tests:\s+(\d+) passed, (\d+) total", output)
    assert counts, output[-2000:]
    assert counts.group(1) == counts.group(2) and int(counts.group(2)) > 0


def test_wire_types_match_the_server_schema() -> None:
    result = npm("run", "--silent", "gen:types:check", LLAMALAB_PYTHON=sys.executable)
    assert result.returncode == 0, (result.stdout + result.stderr)[-2000:]


def test_wire_types_check_catches_a_drift(tmp_path: Path) -> None:
    from llamalab.extension.schema import wire_schema

    schema = wire_schema()
    schema["$defs"]["TokenMessage"]["properties"]["extra_field"] = {"type": "string"}
    schema["$defs"]["TokenMessage"]["required"].append("extra_field")
    drifted = tmp_path / "schema.json"
    drifted.write_text(json.dumps(schema))
    result = npm("run", "--silent", "gen:types:check", LLAMALAB_WIRE_SCHEMA=str(drifted))
    assert result.returncode == 1
    assert "out of date" in result.stderr


def test_built_extension_is_linked_where_jupyterlab_finds_it() -> None:
    built = PKG / "dist" / "package.json"
    assert built.exists(), "scripts/setup-env.sh builds labextension/dist"
    meta = json.loads(built.read_text())
    remote_entry = PKG / "dist" / meta["jupyterlab"]["_build"]["load"]
    assert remote_entry.exists()
    linked = Path(sys.prefix) / "share" / "jupyter" / "labextensions" / "@llamalab" / "labextension"
    assert linked.resolve() == (PKG / "dist").resolve()
    listing = subprocess.run([str(Path(sys.executable).parent / "jupyter"), "labextension", "list"],
                             capture_output=True, text=True)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", listing.stdout + listing.stderr)
    assert re.search(r"@llamalab/labextension v[\d.]+ enabled OK", plain), plain
