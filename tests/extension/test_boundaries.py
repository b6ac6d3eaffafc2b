"""The extension uses llamalab's public API only, and importing it stays light."""

from __future__ import annotations

import ast
import subprocess
import sys

import llamalab
from tests.conftest import REPO


def test_extension_uses_only_the_public_api():
    for path in (REPO / "extension").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                    node.module.startswith("llamalab"):
                assert node.module == "llamalab", f"{path.name} imports {node.module}: use the public API"
                missing = [a.name for a in node.names if a.name not in llamalab.__all__]
                assert not missing, f"{path.name} imports {missing}, which llamalab does not export"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("llamalab.") for a in node.names), path.name


def test_importing_the_package_loads_no_framework():
    code = ("import sys, llamalab, llamalab.extension\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'jupyter_server', 'tornado', 'IPython', 'ipywidgets', 'pydantic', 'llama_cpp'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
