#!/usr/bin/env bash
# One call on the GPU machine (no network): check for a GPU and nvcc (scripts/llama-cpp-build.sh,
# shared with setup-env.sh), build llama-cpp-python with CUDA for sm_90 from the carried, trimmed
# sdist, install the carried wheels, run gpu_bench.py. Logs go to $OUT.
#   bash bench/gpu/run.sh            # the real run (needs bench/gpu/carry from prepare.py)
#   bash bench/gpu/run.sh --cpu      # CI dry run: no build, uses the installed llama_cpp, tiny shapes
# Extra arguments after the mode are passed to gpu_bench.py.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
OUT="${OUT:-$REPO/gpu-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if [[ "${1:-}" == "--cpu" ]]; then
  shift
  PY="${PYTHON:-python3}"
  # $PYTHON: a Python with llamalab, llama_cpp and gguf installed (CI: the project venv).
  "$PY" "$HERE/gpu_bench.py" --cpu --tiny --out "$OUT" "$@" 2>&1 | tee "$OUT/bench.log"
  exit "${PIPESTATUS[0]}"
fi

CARRY="$HERE/carry"
PY="${PYTHON:-python3}"
SECONDS=0
{
  echo "== machine"; nvidia-smi || true; "$PY" --version; nproc
  # The same CUDA detection as scripts/setup-env.sh: an NVIDIA GPU and nvcc, or stop here.
  source "$REPO/scripts/llama-cpp-build.sh"
  llama_cpp_detect_build
  echo "$LLAMA_CPP_BUILD_LINE"
  if [[ "$LLAMA_CPP_BUILD" != cuda ]]; then
    echo "error: the GPU run needs an NVIDIA GPU and nvcc (bash bench/gpu/run.sh --cpu is the CPU dry run)" >&2
    exit 1
  fi
  VENV="${VENV:-/tmp/llamalab-gpu-venv}"
  "$PY" -m venv --system-site-packages "$VENV"
  VPY="$VENV/bin/python"
  echo "== build llama-cpp-python with CUDA (sm_90) from the carried sdist"
  llama_cpp_export_cuda_env -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=OFF
  echo "CMAKE_ARGS=$CMAKE_ARGS${CUDACXX:+ CUDACXX=$CUDACXX}"
  export CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)"
  "$VPY" -m pip install --no-index --no-build-isolation --no-deps --no-cache-dir "$CARRY"/llama_cpp_python-*.tar.gz
  echo "build done at ${SECONDS}s"
  "$VPY" -m pip install --no-index --no-deps --no-cache-dir "$CARRY"/gguf-*.whl "$CARRY"/diskcache-*.whl "$CARRY"/llamalab-*.whl
  "$VPY" -c "import llama_cpp, llamalab; print('llama_cpp', llama_cpp.__version__, 'gpu offload', llama_cpp.llama_supports_gpu_offload())"
  echo "== benchmark"
  "$VPY" "$HERE/gpu_bench.py" --out "$OUT" "$@"
  echo "all done at ${SECONDS}s"
} 2>&1 | tee "$OUT/run.log"
exit "${PIPESTATUS[0]}"
