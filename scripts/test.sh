#!/usr/bin/env bash
# The whole test suite: unit tests, engine, CLI and eval tests against the
# real default model (fetched and verified if missing), then the Kotlin,
# Python and Swift-header bindings tests, then the server's (openai client,
# browser), then each fuzz target for 20 s (fuzz/README.md), and last the
# trainer's CUDA build (compiled and linked against a
# CUDA 13 toolkit from PyPI; its GPU tests run on a GPU machine through
# scripts/gpu-check.sh). CI runs exactly this.
#
# The last two stages spend their time building (a sanitizer build of
# llama.cpp; candle's CUDA kernels): each runs only when the files it
# compiles differ from those its last passing run recorded in .ci/built/
# (scripts/built.sh), and the log says which. RUN_ALL=1 runs both anyway.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
. scripts/ccache-env.sh

# Each stage's seconds, so a slow CI log shows where the time went.
stage() { local t0=$SECONDS; "$@"; echo "==> test.sh: '$*' took $((SECONDS - t0)) s"; }
stage cargo test --release --locked --workspace
stage bash scripts/test-bindings.sh
stage bash scripts/test-server.sh
# Run a build stage unless .ci/built/NAME records a pass on these inputs.
built_stage() {
  local name=$1; shift
  if [ "${RUN_ALL:-0}" != 1 ] && bash scripts/built.sh check "$name"; then return; fi
  stage "$@"
}
built_stage fuzz bash scripts/fuzz.sh 20
built_stage cuda bash scripts/build-cuda.sh
echo "==> test.sh: all stages passed in $SECONDS s"
