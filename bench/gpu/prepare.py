#!/usr/bin/env python
"""Prepare what the one-call GPU benchmark carries to a machine with no network.

Runs HERE (a machine with network and the project venv)::

    .venv/bin/python bench/gpu/prepare.py            # writes bench/gpu/carry/ (ignored by git)
    .venv/bin/python bench/gpu/prepare.py --no-check # skip the cmake configure check

Into ``bench/gpu/carry/``:

* ``llama_cpp_python-<v>.tar.gz``: the sdist of the installed llama-cpp-python version, repacked
  without llama.cpp's vocab test files, docs, media, examples, tests, tools other than mtmd, and
  the GPU backends the build does not use (only ggml-cpu, ggml-cuda and the small shared ones stay);
* ``gguf``, ``diskcache`` wheels (the GPU machine's Python lacks them);
* a ``llamalab`` wheel built from this working tree.

Then it checks that the trimmed tree still configures (cmake's configure step, CPU build) and
prints the sizes; the whole folder must stay under 60 MiB (the device tool carries 64 MiB).
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CARRY = Path(__file__).resolve().parent / "carry"
LIMIT = 60 * 1024 * 1024

# Paths relative to the sdist's top folder; a match drops the file or the whole folder.
DROP = [
    ".git", "docs", "docker", "examples", "tests", "scripts", "mkdocs.yml", ".github",
    "vendor/llama.cpp/.git", "vendor/llama.cpp/docs", "vendor/llama.cpp/media", "vendor/llama.cpp/examples",
    "vendor/llama.cpp/tests", "vendor/llama.cpp/benches", "vendor/llama.cpp/pocs",
    "vendor/llama.cpp/gguf-py", "vendor/llama.cpp/conversion", "vendor/llama.cpp/scripts",
    "vendor/llama.cpp/.devops", "vendor/llama.cpp/.github", "vendor/llama.cpp/ci",
    "vendor/llama.cpp/grammars", "vendor/llama.cpp/prompts", "vendor/llama.cpp/requirements",
    "vendor/llama.cpp/models/ggml-vocab-*",
    # every tool but mtmd (llama-cpp-python builds libmtmd; tools are off in a subproject build)
    "vendor/llama.cpp/tools/[!Cm]*", "vendor/llama.cpp/tools/m[!t]*",
    # backends left out of a CUDA build
    *[f"vendor/llama.cpp/ggml/src/ggml-{b}" for b in (
        "sycl", "vulkan", "metal", "cann", "musa", "opencl", "hip", "kompute", "webgpu", "virtgpu",
        "openvino", "hexagon", "et", "zdnn", "zendnn")],
]


def dropped(rel: str) -> bool:
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        prefix = "/".join(parts[:i])
        if any(fnmatch.fnmatchcase(prefix, pat) for pat in DROP):
            return True
    return False


def run(cmd: list[str], **kw) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def trim_sdist(sdist: Path, dst: Path, tmp: Path) -> Path:
    src_dir = tmp / "src"
    with tarfile.open(sdist) as tf:
        tf.extractall(src_dir, filter="data")
    (top,) = list(src_dir.iterdir())
    kept = removed = 0
    for path in sorted(top.rglob("*"), reverse=True):
        rel = path.relative_to(top).as_posix()
        if dropped(rel):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists() or path.is_symlink():
                path.unlink()
            removed += 1
    for p in top.rglob("*"):
        kept += p.is_file()
    out = dst / sdist.name
    with tarfile.open(out, "w:gz", compresslevel=9) as tf:
        tf.add(top, arcname=top.name)
    print(f"trimmed {sdist.name}: {sdist.stat().st_size / 2**20:.1f} MiB -> {out.stat().st_size / 2**20:.1f} MiB "
          f"({kept} files kept)")
    return top


def configure_check(top: Path, tmp: Path) -> None:
    """cmake's configure step on the trimmed tree, as the package's build would run it (CPU)."""
    build = tmp / "build"
    cmake = shutil.which("cmake") or str(Path(sys.executable).parent / "cmake")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    run([cmake, "-S", str(top), "-B", str(build), *gen, "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=OFF"],
        stdout=subprocess.DEVNULL)
    print("cmake configure of the trimmed tree: OK")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-check", action="store_true", help="skip the cmake configure check")
    args = ap.parse_args(argv)
    version = metadata.version("llama_cpp_python")
    pip = [sys.executable, "-m", "pip"]
    if CARRY.exists():
        shutil.rmtree(CARRY)
    CARRY.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="llamalab-gpu-prep-") as t:
        tmp = Path(t)
        run([*pip, "download", "-q", "--no-deps", "--no-binary", ":all:", f"llama-cpp-python=={version}",
             "-d", str(tmp / "sdist")])
        (sdist,) = list((tmp / "sdist").glob("llama_cpp_python-*.tar.gz"))
        top = trim_sdist(sdist, CARRY, tmp)
        for name in ("gguf", "diskcache"):
            run([*pip, "download", "-q", "--no-deps", "--only-binary", ":all:", f"{name}=={metadata.version(name)}",
                 "-d", str(CARRY)])
        run([*pip, "wheel", "-q", "--no-deps", "-w", str(CARRY), str(REPO)])
        if not args.no_check:
            configure_check(top, tmp)
    total = 0
    for f in sorted(CARRY.iterdir()):
        total += f.stat().st_size
        print(f"  {f.stat().st_size / 2**20:8.2f} MiB  {f.name}")
    print(f"  {total / 2**20:8.2f} MiB  total in {CARRY.relative_to(REPO)} (limit {LIMIT / 2**20:.0f} MiB)")
    if total >= LIMIT:
        print("carry folder is too large for the device tool", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
