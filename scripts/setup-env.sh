#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment in .venv and installs llamalab into it,
# editable, with the extras named in $1 (e.g. "test"). Sourced by quickstart.sh and test.sh.
# llama-cpp-python is built from source the first time (6-12 minutes on two cores); pip keeps
# the built wheel in its cache, so later runs take seconds. Set CMAKE_ARGS="-DGGML_CUDA=on"
# before the first run for an NVIDIA GPU build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LLAMALAB_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "error: llamalab needs Python 3.10 or newer; set PYTHON=/path/to/python3.x" >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "==> creating a virtual environment in $venv"
  "$python" -m venv "$venv"
fi
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}"
extras="${1:-}"
target="$root"
[ -n "$extras" ] && target="$root[$extras]"
if ! "$venv/bin/python" -c 'import llama_cpp' 2>/dev/null; then
  echo "==> building llama-cpp-python (first time only: 6-12 minutes on two cores)"
fi
"$venv/bin/python" -m pip install --disable-pip-version-check -q -e "$target"
