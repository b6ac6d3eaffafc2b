#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment in .venv and installs llamalab into it,
# editable, with the extras named in $1 (e.g. "jupyter" or "test"), then enables the Jupyter
# server extension in that environment. Used by quickstart.sh and test.sh.
# llama-cpp-python is built from source the first time (6-12 minutes on two cores); pip keeps
# the built wheel in its cache, so later runs take seconds. With an NVIDIA GPU (nvidia-smi lists
# one) and a CUDA compiler (nvcc) it is built with CMAKE_ARGS="-DGGML_CUDA=on", and a CPU-only
# llama-cpp-python already in the environment is rebuilt so; the detection is in
# llama-cpp-build.sh, shared with bench/gpu/run.sh. Setting CMAKE_ARGS yourself (even to "")
# turns the detection off: pip then builds with exactly your CMAKE_ARGS.
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
# shellcheck source=scripts/llama-cpp-build.sh
source "$root/scripts/llama-cpp-build.sh"
cuda=0
llama_cpp_detect_build
if [ -n "${CMAKE_ARGS+set}" ]; then
  hint=""
  if [ "$LLAMA_CPP_BUILD" = cuda ] && [[ "$CMAKE_ARGS" != *GGML_CUDA* ]]; then
    hint="; nvidia-smi sees $LLAMA_CPP_GPU and nvcc is present: add $LLAMA_CPP_CUDA_CMAKE_ARGS for GPU offload"
  fi
  echo "==> llama-cpp-python: built with your CMAKE_ARGS (${CMAKE_ARGS:-empty})$hint"
else
  echo "$LLAMA_CPP_BUILD_LINE"
  if [ "$LLAMA_CPP_BUILD" = cuda ]; then
    llama_cpp_export_cuda_env
    cuda=1
  fi
fi
cpu_instead="put CMAKE_ARGS= (empty) in front of the command to build llama-cpp-python for the CPU only"
extras="${1:-}"
target="$root"
[ -n "$extras" ] && target="$root[$extras]"
if ! "$venv/bin/python" -c 'import llama_cpp' 2>/dev/null; then
  if [ "$cuda" = 1 ]; then
    echo "==> building llama-cpp-python with CUDA (first time only: longer than the CPU build's 6-12 minutes on two cores)"
  else
    echo "==> building llama-cpp-python (first time only: 6-12 minutes on two cores)"
  fi
fi
echo "==> installing llamalab${extras:+[$extras]} into $venv"
if ! "$venv/bin/python" -m pip install --disable-pip-version-check -q -e "$target"; then
  [ "$cuda" = 1 ] && echo "error: installing failed; if the CUDA build of llama-cpp-python failed above, $cpu_instead" >&2
  exit 1
fi
# pip reuses an installed or cached CPU-only llama-cpp-python whatever CMAKE_ARGS says: rebuild it.
if [ "$cuda" = 1 ] && ! llama_cpp_has_gpu_offload "$venv/bin/python"; then
  version="$("$venv/bin/python" -c 'from importlib.metadata import version; print(version("llama-cpp-python"))')"
  echo "==> rebuilding llama-cpp-python $version with CUDA: the installed one has no GPU offload (this takes a while)"
  if ! "$venv/bin/python" -m pip install --disable-pip-version-check -q --force-reinstall --no-cache-dir --no-deps \
      "llama-cpp-python==$version" || ! llama_cpp_has_gpu_offload "$venv/bin/python"; then
    echo "warning: the CUDA build of llama-cpp-python failed (see above); the CPU build stays installed." \
         "Fix the CUDA toolkit and run this again, or $cpu_instead" >&2
  fi
fi
# The JupyterHub test (tests/extension/test_jupyterhub.py) needs the Hub's proxy, an npm package:
# install it into a project-local prefix once (the test finds it in .cache/node-tools).
if [[ ",$extras," == *,test,* ]]; then
  chp="$root/.cache/node-tools/node_modules/.bin/configurable-http-proxy"
  if [ ! -x "$chp" ]; then
    if ! command -v npm >/dev/null 2>&1; then
      echo "error: the JupyterHub test needs configurable-http-proxy from npm: install Node.js 18+ and npm" >&2
      exit 1
    fi
    echo "==> installing configurable-http-proxy (npm) into $root/.cache/node-tools"
    npm install --silent --no-audit --no-fund --prefix "$root/.cache/node-tools" configurable-http-proxy@4 >/dev/null
  fi
fi
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
