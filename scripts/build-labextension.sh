#!/usr/bin/env bash
# Builds the JupyterLab front end (labextension/) into labextension/dist when it is missing or
# older than its sources, and links it into the virtual environment's
# share/jupyter/labextensions, where JupyterLab finds it (an editable install cannot place it,
# as a wheel does). Needs Node.js 18+ and npm; wheels ship the built extension instead.
# Usage: build-labextension.sh VENV
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:?usage: build-labextension.sh VENV}"
pkg="$root/labextension"
if ! command -v npm >/dev/null 2>&1; then
  echo "error: building the JupyterLab front end needs Node.js 18+ and npm; install them" \
       "(e.g. apt-get install nodejs npm) or install a llamalab wheel, which ships it built" >&2
  exit 1
fi
cd "$pkg"
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "==> installing the front end's npm packages"
  npm ci --no-audit --no-fund --loglevel=error
fi
stale=""
if [ ! -f dist/package.json ]; then
  stale=yes
elif [ -n "$(find src style schema scripts package.json tsconfig.json -newer dist/package.json -type f 2>/dev/null | head -1)" ]; then
  stale=yes
fi
if [ -n "$stale" ]; then
  echo "==> building the JupyterLab front end"
  npm run --silent build:prod >/dev/null
fi
target="$venv/share/jupyter/labextensions/@llamalab"
mkdir -p "$target"
ln -sfn "$pkg/dist" "$target/labextension"
