"""docs/quickstart.ipynb, which the README's main command opens, runs top to bottom.

Executed with nbclient in a real IPython kernel; without a server around, the magics load
the demo model in the kernel (the server path is covered by test_kernel_magics)."""

from __future__ import annotations

import os

import pytest

from tests.conftest import REPO, TEST_HOME


def test_quickstart_notebook_runs_and_streams_answers(demo_model, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="nbformat comes with the jupyter extra")
    nbclient = pytest.importorskip("nbclient", reason="nbclient comes with the jupyter extra")
    for name in ("LLAMALAB_SERVER_URL", "LLAMALAB_SERVER_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LLAMALAB_HOME", str(TEST_HOME))
    notebook = nbformat.read(REPO / "docs" / "quickstart.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO / "docs")}}).execute()
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    errors = [o for cell in code_cells for o in cell.outputs if o.output_type == "error"]
    assert errors == []

    def text_of(cell):
        parts = []
        for output in cell.outputs:
            data = output.get("data", {})
            parts.append(output.get("text", "") + data.get("text/plain", "") + data.get("text/markdown", ""))
        return "".join(parts)

    haiku = next(c for c in code_cells if "haiku" in c.source)
    assert len(text_of(haiku).strip()) > 10  # the model answered into the cell
    models = next(c for c in code_cells if c.source.strip() == "%llama models")
    assert "smollm2-135m-instruct:q4_1" in text_of(models)
    assert os.environ.get("LLAMALAB_HOME") == str(TEST_HOME)
