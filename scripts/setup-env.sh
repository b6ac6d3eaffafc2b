#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment in .venv and installs llamalab into it,
# editable, with the extras named in $1 (e.g. "jupyter" or "test"), then enables the Jupyter
# server extension in that environment. Used by quickstart.sh and test.sh.
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
echo "==> installing llamalab${extras:+[$extras]} into $venv"
"$venv/bin/python" -m pip install --disable-pip-version-check -q -e "$target"
# An editable install cannot place etc/jupyter/jupyter_server_config.d/llamalab.json as a wheel
# does, so copy it into the environment: that file is what enables the server extension.
if [ -x "$venv/bin/jupyter" ]; then
  mkdir -p "$venv/etc/jupyter/jupyter_server_config.d"
  cp "$root/extension/jupyter-config/jupyter_server_config.d/llamalab.json" \
     "$venv/etc/jupyter/jupyter_server_config.d/llamalab.json"
  bash "$root/scripts/build-labextension.sh" "$venv"
  listing="$("$venv/bin/jupyter" server extension list 2>&1 || true)"
  if ! grep -q "llamalab.extension.*OK" <<<"$listing"; then
    echo "error: the llamalab Jupyter server extension does not load; run" \
         "'$venv/bin/jupyter server extension list' to see why" >&2
    exit 1
  fi
  if ! "$venv/bin/jupyter" labextension list 2>&1 | grep -q "@llamalab/labextension.*enabled.*OK"; then
    echo "error: JupyterLab does not find llamalab's front end; run" \
         "'$venv/bin/jupyter labextension list' to see why" >&2
    exit 1
  fi
fi
