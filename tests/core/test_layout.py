"""The design card's layout: import directions, light imports, and packaging that works."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

FORBIDDEN_IN_CORE = {"jupyter_server", "jupyter_client", "jupyterlab", "notebook", "IPython", "ipywidgets",
                     "ipykernel", "tornado", "pygls", "lsprotocol", "traitlets"}
HEAVY = {"llama_cpp", "gguf", "huggingface_hub", "httpx", "numpy", "jinja2", "tqdm"}


def imported_modules(folder: Path) -> dict[Path, set[str]]:
    found: dict[Path, set[str]] = {}
    for path in folder.rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[path] = names
    return found


def test_core_never_imports_the_faces_frameworks():
    offenders = {str(path.relative_to(REPO)): sorted(n for n in names if n.split(".")[0] in FORBIDDEN_IN_CORE)
                 for path, names in imported_modules(REPO / "core").items()}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_faces_do_not_import_each_other():
    for face, other in (("extension", "llamalab.lsp"), ("lsp", "llamalab.extension")):
        for path, names in imported_modules(REPO / face).items():
            assert not any(n == other or n.startswith(other + ".") for n in names), path


def test_importing_every_core_module_pulls_in_no_framework():
    modules = sorted("llamalab." + ".".join(p.relative_to(REPO / "core").with_suffix("").parts)
                     for p in (REPO / "core").rglob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    code = ("import sys, importlib\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN_IN_CORE)!r})\n"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_import_llamalab_is_light():
    code = ("import sys, time; t = time.perf_counter(); import llamalab\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(HEAVY)!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_public_api_is_complete():
    import llamalab

    missing = [name for name in llamalab.__all__ if not hasattr(llamalab, name)]
    assert missing == []
    assert {"LocalEngine", "RemoteEngine", "AsyncEngine", "Engine", "ModelStore", "pull", "locate",
            "GenerationParams", "LlamalabError"} <= set(llamalab.__all__)


def test_editable_install_maps_the_three_folders():
    import llamalab
    import llamalab.extension
    import llamalab.lsp

    assert Path(llamalab.__file__).parent == REPO / "core"
    assert Path(llamalab.extension.__file__).parent == REPO / "extension"
    assert Path(llamalab.lsp.__file__).parent == REPO / "lsp"


@pytest.mark.slow
def test_wheel_builds_and_imports_in_a_fresh_virtualenv(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(REPO)],
                   check=True, capture_output=True, text=True, timeout=600)
    wheel = next(dist.glob("llamalab-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("llamalab/__init__.py", "llamalab/engine/local.py", "llamalab/cli/main.py",
                     "llamalab/extension/__init__.py", "llamalab/lsp/__init__.py", "llamalab/py.typed"):
        assert expected in names
    # Every source file of the three folders ships, so no subpackage is forgotten in pyproject.
    for folder, package in (("core", "llamalab"), ("extension", "llamalab/extension"), ("lsp", "llamalab/lsp")):
        for source in (REPO / folder).rglob("*.py"):
            if "node_modules" in source.parts:
                continue
            assert f"{package}/{source.relative_to(REPO / folder).as_posix()}" in names, source
    assert not any(n.startswith(("core/", "extension/", "lsp/", "tests/")) for n in names)
    # The JupyterLab front end ships prebuilt, where JupyterLab looks for it: users need no Node.
    labext = "llamalab-0.1.0.data/data/share/jupyter/labextensions/@llamalab/labextension/"
    assert labext + "package.json" in names
    assert any(n.startswith(labext + "static/remoteEntry.") for n in names)
    assert not any("node_modules" in n for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q",
                              str(wheel)], capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-2000:]
    check = subprocess.run([str(python), "-c", "import llamalab, llamalab.extension, llamalab.lsp, "
                            "llamalab.engine.local; print(llamalab.__version__, llamalab.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert check.returncode == 0, check.stderr
    version, location = check.stdout.split()
    assert version == "0.1.0" and str(venv) in location
    cli = subprocess.run([str(venv / "bin" / "llamalab"), "--help"], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0 and "models" in cli.stdout
