#!/usr/bin/env bash
# The trainer's CUDA build, compiled and linked here (no GPU needed): the
# CUDA 13.0 toolkit from PyPI (scripts/cuda-toolkit.sh), then `reckon-train`
# and the GPU tests (trainer/tests/gpu.rs) with `--features cuda` for
# compute capability $CUDA_COMPUTE_CAP (default 90: H100/H200). The
# stripped, gzipped binaries land in target/cuda/ (about 40 MB: the
# device's 64 MiB carry limit), what scripts/gpu-check.sh runs on a GPU
# machine (which has the CUDA runtime but no Rust toolchain):
#
#   bash scripts/build-cuda.sh     # then carry target/cuda to the GPU machine
#
# Only the trainer: the runtime's llama.cpp CUDA build (`--features cuda`
# on the root crate) compiles hundreds of kernel instantiations, far too
# slow for 2 cores in CI (see the README's "CUDA" section).
#
# It shares target/ with the CPU build. The cuda feature changes the features
# of llama-cpp-sys-2's build-script dependencies (`either`, through
# cudaforge's `which`), so cargo compiles llama.cpp into a new OUT_DIR:
# through ccache (scripts/ccache-env.sh) that is about 30 s, not 5 minutes.
# Last it relinks the CPU reckon-train so target/release stays runnable here.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/ccache-env.sh

t0=$SECONDS
CUDA_HOME=$(bash scripts/cuda-toolkit.sh)
export CUDA_HOME CUDA_PATH=$CUDA_HOME PATH=$CUDA_HOME/bin:$PATH
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
t1=$SECONDS
echo "==> CUDA toolkit ready in $((t1 - t0)) s: $CUDA_HOME (compute capability $CUDA_COMPUTE_CAP)"

echo "==> building reckon-train and its GPU tests with --features cuda"
features=(--release --locked --workspace --features reckon-trainer/cuda)
cargo build "${features[@]}" --bin reckon-train
tests=$(cargo test "${features[@]}" --test gpu --no-run --message-format=json \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "gpu" and m.get("executable"):
        print(m["executable"])')
[ -n "$tests" ] || { echo "build-cuda.sh: no gpu test binary was built" >&2; exit 1; }
rm -rf target/cuda && mkdir -p target/cuda
# Linked against CUDA (the driver's libcuda.so.1 is a stub here): proof
# that the feature compiled, not that it runs.
for b in target/release/reckon-train "$tests"; do
  if ! readelf -d "$b" | grep -q 'libcublas'; then
    echo "build-cuda.sh: $b does not link cuBLAS: the cuda feature was not built" >&2
    exit 1
  fi
done
strip -o target/cuda/reckon-train target/release/reckon-train
strip -o target/cuda/gpu-tests "$tests"
gzip -f target/cuda/reckon-train target/cuda/gpu-tests
t2=$SECONDS
echo "==> CUDA build done in $((t2 - t1)) s; carried files:"
ls -l target/cuda
du -ch target/cuda/* | tail -1

echo "==> relinking the CPU reckon-train"
cargo build --release --locked --workspace
echo "==> build-cuda.sh: $((SECONDS - t0)) s in all"
# The test command skips this stage while its inputs stay as built here.
bash scripts/built.sh record cuda $((SECONDS - t0))
