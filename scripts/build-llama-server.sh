#!/usr/bin/env bash
# Builds llama.cpp's own `llama-server` and `rpc-server` from the llama.cpp sources vendored in the
# llama-cpp-python sdist of the installed version, once, into a cache outside the repository:
#
#   bash scripts/build-llama-server.sh      # progress on stderr; the bin dir is the last stdout line
#   bin="$(bash scripts/build-llama-server.sh | tail -n 1)"
#
# The cache is ${LLAMALAB_DEV_CACHE:-$HOME/.cache/llamalab-dev}/llama.cpp-<version>/bin, so fresh
# clones reuse it; a second call returns at once. The build runs in a temporary directory next to
# the cache and is renamed into place only when both binaries exist (no half-built cache), and a
# lock file serializes concurrent callers. The binaries are linked statically against llama.cpp
# (-DBUILD_SHARED_LIBS=OFF) so the renamed directory still runs. CPU build with the RPC backend
# (-DGGML_RPC=ON) and no libcurl; CUDA too when scripts/llama-cpp-build.sh finds a GPU and nvcc.
# Environment: LLAMALAB_VENV (the Python whose llama-cpp-python version is used, default .venv),
# LLAMALAB_BUILD_JOBS (default 2).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LLAMALAB_VENV:-$root/.venv}"
python="$venv/bin/python"
jobs="${LLAMALAB_BUILD_JOBS:-2}"

log() { printf '%s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

[ -x "$python" ] || die "no Python at $python: run 'bash scripts/setup-env.sh test' first"
version="$("$python" -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))' 2>/dev/null)" \
  || die "llama-cpp-python is not installed in $venv: run 'bash scripts/setup-env.sh test' first"
cache_root="${LLAMALAB_DEV_CACHE:-$HOME/.cache/llamalab-dev}"
dest="$cache_root/llama.cpp-$version"
bin="$dest/bin"

built() { [ -x "$bin/llama-server" ] && [ -x "$bin/rpc-server" ]; }

if built; then
  printf '%s\n' "$bin"
  exit 0
fi

mkdir -p "$cache_root"
# One builder at a time; a caller that waited finds the finished cache and returns at once.
exec 9>"$cache_root/.llama.cpp-$version.lock"
if command -v flock >/dev/null 2>&1; then
  flock 9
fi
if built; then
  printf '%s\n' "$bin"
  exit 0
fi

for tool in cmake c++ tar; do
  command -v "$tool" >/dev/null 2>&1 || die "building llama-server needs '$tool': install it (e.g. apt-get install cmake g++)"
done

# The work folder outlives a failed or interrupted build, so the next call goes on from there
# (the lock above keeps two builds out of it); it is removed once the binaries are in place.
work="$cache_root/.build-llama.cpp-$version"
mkdir -p "$work"
src="$work/llama_cpp_python-$version/vendor/llama.cpp"
if [ ! -f "$src/CMakeLists.txt" ]; then
log "==> llama-server $version: fetching the llama-cpp-python $version sdist (pip's cache may hold it)"
"$python" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$work/sdist" >&2 \
  || die "could not download the llama-cpp-python $version sdist: check the network or pip's index settings"
sdist="$(find "$work/sdist" -maxdepth 1 -name 'llama_cpp_python-*.tar.gz' | head -n 1)"
[ -n "$sdist" ] || die "pip saved no llama_cpp_python sdist into $work/sdist"
tar -xzf "$sdist" -C "$work"
fi
[ -f "$src/CMakeLists.txt" ] || die "the sdist has no vendor/llama.cpp/CMakeLists.txt (unexpected layout at $src)"

cmake_args=(
  -DCMAKE_BUILD_TYPE=Release
  -DBUILD_SHARED_LIBS=OFF
  -DGGML_RPC=ON
  -DLLAMA_CURL=OFF
  -DLLAMA_BUILD_TESTS=OFF
  -DLLAMA_BUILD_EXAMPLES=OFF
)
# shellcheck source=scripts/llama-cpp-build.sh
source "$root/scripts/llama-cpp-build.sh"
llama_cpp_detect_build
log "${LLAMA_CPP_BUILD_LINE/llama-cpp-python/llama-server}"
if [ "$LLAMA_CPP_BUILD" = cuda ]; then
  cmake_args+=("$LLAMA_CPP_CUDA_CMAKE_ARGS" "-DCMAKE_CUDA_COMPILER=$LLAMA_CPP_NVCC")
fi

log "==> llama-server $version: configuring (${cmake_args[*]})"
cmake -S "$src" -B "$work/build" "${cmake_args[@]}" >&2 || die "cmake could not configure llama.cpp $version (see above)"
# The RPC worker's target is ggml-rpc-server in recent llama.cpp, rpc-server before.
rpc_target="$(sed -n 's/^set(TARGET \([A-Za-z0-9_-]*\))/\1/p' "$src/tools/rpc/CMakeLists.txt" 2>/dev/null | head -n 1)"
rpc_target="${rpc_target:-rpc-server}"
log "==> llama-server $version: building llama-server and $rpc_target with -j$jobs (several minutes on two cores)"
cmake --build "$work/build" --config Release --target llama-server "$rpc_target" -j "$jobs" >&2 \
  || die "building llama-server/$rpc_target failed (see the compiler output above); run again to go on from there"

rm -rf "$work/out"
mkdir -p "$work/out/bin"
for pair in llama-server:llama-server "$rpc_target":rpc-server; do
  found="$(find "$work/build" -type f -name "${pair%%:*}" -perm -u+x | head -n 1)"
  [ -n "$found" ] || die "the build produced no ${pair%%:*} binary"
  cp "$found" "$work/out/bin/${pair#*:}"
done
printf 'llama-cpp-python %s\nbuild %s\ncmake %s\n' "$version" "$LLAMA_CPP_BUILD" "${cmake_args[*]}" >"$work/out/BUILD-INFO"
rm -rf "$dest"
mv "$work/out" "$dest"
rm -rf "$work"
built || die "the binaries did not land in $bin"
log "==> llama-server $version: built into $bin"
printf '%s\n' "$bin"
