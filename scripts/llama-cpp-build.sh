# Which llama-cpp-python build this machine should get: sourced (not run) by scripts/setup-env.sh
# and bench/gpu/run.sh, so the CUDA detection lives in one place.
#
#   source scripts/llama-cpp-build.sh
#   llama_cpp_detect_build        # sets the LLAMA_CPP_* variables below, prints nothing
#   echo "$LLAMA_CPP_BUILD_LINE"  # "==> llama-cpp-python: CUDA build (nvidia-smi sees ...; nvcc 12.4)"
#   llama_cpp_export_cuda_env [more cmake args]  # CMAKE_ARGS (and CUDACXX) for a CUDA build
#
# A CUDA build needs both an NVIDIA GPU (`nvidia-smi -L` succeeds and lists one) and a CUDA
# compiler ($CUDACXX, `nvcc` on PATH, or bin/nvcc under $CUDA_PATH, $CUDA_HOME or
# /usr/local/cuda). Only functions and variables with the llama_cpp_ / LLAMA_CPP_ prefix are
# defined here; nothing runs when sourced. Works under `set -euo pipefail`.

LLAMA_CPP_CUDA_CMAKE_ARGS="-DGGML_CUDA=on"

# The CUDA compiler's path, or nothing: $CUDACXX, then nvcc on PATH, then bin/nvcc under
# $CUDA_PATH, $CUDA_HOME and /usr/local/cuda.
llama_cpp_find_nvcc() {
  local candidate
  if [ -n "${CUDACXX:-}" ] && [ -x "$CUDACXX" ]; then
    printf '%s\n' "$CUDACXX"
    return 0
  fi
  if command -v nvcc >/dev/null 2>&1; then
    command -v nvcc
    return 0
  fi
  for candidate in "${CUDA_PATH:-}" "${CUDA_HOME:-}" /usr/local/cuda; do
    if [ -n "$candidate" ] && [ -x "$candidate/bin/nvcc" ]; then
      printf '%s\n' "$candidate/bin/nvcc"
      return 0
    fi
  done
}

# Sets LLAMA_CPP_BUILD (cuda or cpu), LLAMA_CPP_BUILD_LINE (the line to print), LLAMA_CPP_GPU
# (the first GPU's name), LLAMA_CPP_NVCC and LLAMA_CPP_NVCC_VERSION (empty when not found).
llama_cpp_detect_build() {
  local listing="" count=0 more=""
  LLAMA_CPP_BUILD=cpu LLAMA_CPP_GPU="" LLAMA_CPP_NVCC="" LLAMA_CPP_NVCC_VERSION=""
  if command -v nvidia-smi >/dev/null 2>&1 && listing="$(nvidia-smi -L 2>/dev/null)"; then
    count="$(grep -c '^GPU [0-9]' <<<"$listing" || true)"
    # "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-...)" -> "NVIDIA H100 80GB HBM3"
    LLAMA_CPP_GPU="$(sed -n 's/^GPU [0-9]*: \(.*\) (UUID:.*$/\1/p; s/^GPU [0-9]*: \([^(]*\)$/\1/p' <<<"$listing" | head -n 1 || true)"
  fi
  if [ "$count" -eq 0 ]; then
    LLAMA_CPP_BUILD_LINE="==> llama-cpp-python: CPU build (no NVIDIA GPU found)"
    return 0
  fi
  LLAMA_CPP_GPU="${LLAMA_CPP_GPU:-an NVIDIA GPU}"
  if [ "$count" -gt 1 ]; then
    more=" and $((count - 1)) more"
  fi
  LLAMA_CPP_NVCC="$(llama_cpp_find_nvcc)"
  if [ -z "$LLAMA_CPP_NVCC" ]; then
    LLAMA_CPP_BUILD_LINE="==> llama-cpp-python: CPU build: an NVIDIA GPU is present ($LLAMA_CPP_GPU$more) but no CUDA compiler (nvcc); install the CUDA toolkit for GPU offload"
    return 0
  fi
  # "Cuda compilation tools, release 12.4, V12.4.131" -> "12.4"
  LLAMA_CPP_NVCC_VERSION="$("$LLAMA_CPP_NVCC" --version 2>/dev/null | sed -n 's/.*release \([0-9][0-9.]*\).*/\1/p' | head -n 1 || true)"
  LLAMA_CPP_BUILD=cuda
  LLAMA_CPP_BUILD_LINE="==> llama-cpp-python: CUDA build (nvidia-smi sees $LLAMA_CPP_GPU$more; nvcc ${LLAMA_CPP_NVCC_VERSION:-of unknown version})"
}

# Export CMAKE_ARGS for a CUDA build (plus any extra cmake arguments given) and, when the
# compiler is not on PATH, CUDACXX so that CMake finds it. Call after llama_cpp_detect_build.
llama_cpp_export_cuda_env() {
  CMAKE_ARGS="$LLAMA_CPP_CUDA_CMAKE_ARGS${*:+ $*}"
  export CMAKE_ARGS
  if [ -n "$LLAMA_CPP_NVCC" ] && [ -z "${CUDACXX:-}" ] && ! command -v nvcc >/dev/null 2>&1; then
    CUDACXX="$LLAMA_CPP_NVCC"
    export CUDACXX
  fi
}

# Whether the llama_cpp importable by the given Python was built with GPU offload.
llama_cpp_has_gpu_offload() {
  "$1" -c 'import llama_cpp, sys; sys.exit(0 if llama_cpp.llama_supports_gpu_offload() else 1)' 2>/dev/null
}
