"""Builds the JupyterLab front end (labextension/) as part of the Python build.

Everything about the package is in pyproject.toml; this file only adds one step to
setuptools' ``build``: hatch-jupyter-builder's ``npm_builder`` runs ``npm install`` and
``npm run build:prod`` in labextension/ when labextension/dist is missing or older than its sources,
and the built extension is then installed as data files under
``share/jupyter/labextensions/@llamalab/labextension``, where JupyterLab finds it. Wheels
therefore ship the prebuilt extension and their users need no Node.js.

``HATCH_JUPYTER_BUILDER_SKIP_NPM=1`` skips the npm step (the wheel then ships whatever
labextension/dist holds, or no front end if it is absent).
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build import build

HERE = Path(__file__).resolve().parent
LABEXTENSION = HERE / "labextension"
BUILT = LABEXTENSION / "dist"
INSTALLED_AS = "share/jupyter/labextensions/@llamalab/labextension"


SOURCES = ("src", "style", "schema", "scripts", "package.json", "package-lock.json", "tsconfig.json")


def front_end_is_stale() -> bool:
    """True when labextension/dist is missing or older than any of its sources."""
    marker = BUILT / "package.json"
    if not marker.exists():
        return True
    built_at = marker.stat().st_mtime
    for name in SOURCES:
        source = LABEXTENSION / name
        paths = source.rglob("*") if source.is_dir() else [source]
        if any(path.is_file() and path.stat().st_mtime > built_at for path in paths):
            return True
    return False


def built_data_files() -> list[tuple[str, list[str]]]:
    """The built extension's files, grouped by the folder they are installed into."""
    groups: dict[str, list[str]] = {}
    for path in sorted(BUILT.rglob("*")):
        if path.is_file():
            target = f"{INSTALLED_AS}/{path.parent.relative_to(BUILT).as_posix()}".rstrip("/.")
            groups.setdefault(target, []).append(path.relative_to(HERE).as_posix())
    return sorted(groups.items())


class BuildWithLabextension(build):
    """setuptools' build, preceded by the front end's npm build."""

    def run(self) -> None:
        if (LABEXTENSION / "package.json").exists() and front_end_is_stale():
            from hatch_jupyter_builder import npm_builder

            npm_builder(target_name="wheel", version="standard", path=str(LABEXTENSION), build_cmd="build:prod",
                        force=True, npm=os.environ.get("LLAMALAB_NPM", "npm"))
        if BUILT.exists():
            self.distribution.data_files = list(self.distribution.data_files or []) + built_data_files()
        super().run()


setup(cmdclass={"build": BuildWithLabextension})
