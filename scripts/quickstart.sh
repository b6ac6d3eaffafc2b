#!/usr/bin/env bash
# The main job, from a fresh clone: set up .venv with the Jupyter extras, pull the embedded
# default model (98 MB) on first use, and start JupyterLab on docs/quickstart.ipynb with the
# llamalab server extension serving the model. Extra arguments go to `jupyter lab`
# (e.g. --no-browser --port 8888). With --terminal instead, chat in this terminal.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LLAMALAB_VENV:-$root/.venv}"
bash "$root/scripts/setup-env.sh" jupyter
"$venv/bin/llamalab" models pull default
if [ "${1:-}" = "--terminal" ]; then
  shift
  exec "$venv/bin/llamalab" chat "$@"
fi
cd "$root"
as_root=()
[ "$(id -u)" = "0" ] && as_root=(--allow-root)  # containers often run as root; Jupyter refuses it otherwise
exec "$venv/bin/jupyter" lab "${as_root[@]}" docs/quickstart.ipynb "$@"
