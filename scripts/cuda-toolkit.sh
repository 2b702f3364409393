#!/usr/bin/env bash
# A CUDA 13.0 toolkit for *building* (not running) the CUDA code here, from
# NVIDIA's wheels on PyPI (this machine reaches no NVIDIA download site):
# nvcc, cicc (nvvm), headers, and the libraries the build links against
# (cudart, nvrtc, cuBLAS, cuRAND), pinned by hash in cuda-requirements.txt
# and unpacked into .tools/cuda-13.0 in the usual toolkit layout.
#
# libcuda.so belongs to the GPU driver, which no package registry here
# ships; like the toolkit's own lib/stubs/libcuda.so, a stub (every cu*
# entry point of cuda.h, no code) lets the linker resolve the driver API.
# The binaries built against it need the real driver to run (a GPU machine).
#
#   bash scripts/cuda-toolkit.sh      # prints the CUDA_HOME to export
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA_HOME=$PWD/.tools/cuda-13.0
if [ -x "$CUDA_HOME/bin/nvcc" ] && [ -f "$CUDA_HOME/lib/stubs/libcuda.so" ]; then
  echo "$CUDA_HOME"; exit 0
fi
for tool in python3 unzip cc; do
  command -v $tool >/dev/null || { echo "cuda-toolkit.sh: needs $tool (scripts/deps.sh installs it)" >&2; exit 1; }
done
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 \
  --python-version 3.11 -r scripts/cuda-requirements.txt -d "$wheels" >&2
rm -rf "$CUDA_HOME.part" && mkdir -p "$CUDA_HOME.part"
for w in "$wheels"/*.whl; do
  unzip -q -o "$w" 'nvidia/cu13/*' -d "$wheels/x"
done
cp -a "$wheels/x/nvidia/cu13/." "$CUDA_HOME.part/"
cd "$CUDA_HOME.part"
chmod +x bin/* nvvm/bin/* 2>/dev/null || true
# The linker looks for libX.so; the wheels ship libX.so.13 (and cuRAND .so.10).
for so in lib/lib*.so.*; do
  base=${so%%.so.*}.so
  [ -e "$base" ] || ln -s "$(basename "$so")" "$base"
done
[ -e lib64 ] || ln -s lib lib64
mkdir -p lib/stubs
grep -oE '\bcu[A-Z][A-Za-z0-9_]*\b' include/cuda.h | sort -u | sed 's/.*/void &(void) {}/' > lib/stubs/libcuda-stub.c
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o lib/stubs/libcuda.so lib/stubs/libcuda-stub.c
cd - >/dev/null
rm -rf "$CUDA_HOME" && mv "$CUDA_HOME.part" "$CUDA_HOME"
"$CUDA_HOME/bin/nvcc" --version | tail -2 >&2
echo "$CUDA_HOME"
