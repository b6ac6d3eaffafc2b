#!/usr/bin/env bash
# Installs everything the tests need into .venv and runs the whole suite (arguments go to pytest).
# The demo model is pulled once into .cache/test-home and reused by later runs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# The browser tests (tests/ui) drive Debian's Chromium; install it when it is missing.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing Chromium for the browser tests (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
  else
    echo "error: the browser tests need Chromium: run 'sudo apt-get install chromium'" >&2
    exit 1
  fi
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "error: building the JupyterLab front end needs Node.js 18+ and npm: install them first" >&2
  exit 1
fi
bash scripts/setup-env.sh test
# llama.cpp's own llama-server and rpc-server (tests/core/test_remote_llama_server.py), built once
# into a cache outside the repository; a failed build stops here instead of skipping those tests.
llama_server_bin="$(bash scripts/build-llama-server.sh | tail -n 1)"
[ -x "$llama_server_bin/llama-server" ] || { echo "error: scripts/build-llama-server.sh built no llama-server" >&2; exit 1; }
export LLAMA_SERVER="$llama_server_bin/llama-server"
venv="${LLAMALAB_VENV:-$root/.venv}"
status=0
"$venv/bin/python" -m pytest -ra "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests (exit 5); nothing failed"
  exit 0
fi
exit "$status"
