#!/usr/bin/env bash
# The main job, from a fresh clone: set up .venv, pull the embedded default model on first
# use, and open a streaming chat with it in this terminal. Extra arguments go to `llamalab chat`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup-env.sh"
exec "${LLAMALAB_VENV:-$root/.venv}/bin/llamalab" chat "$@"
