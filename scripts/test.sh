#!/usr/bin/env bash
# The whole test suite: unit tests, engine, CLI and eval tests against the
# real default model (fetched and verified if missing), then the Kotlin,
# Python and Swift-header bindings tests, then the server's (openai client,
# browser), then each fuzz target for 20 s (fuzz/README.md), and last the
# trainer's CUDA build (compiled and linked against a
# CUDA 13 toolkit from PyPI; its GPU tests run on a GPU machine through
# scripts/gpu-check.sh). CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
. scripts/ccache-env.sh

# Each stage's seconds, so a slow CI log shows where the time went.
stage() { local t0=$SECONDS; "$@"; echo "==> test.sh: '$*' took $((SECONDS - t0)) s"; }
stage cargo test --release --locked --workspace
stage bash scripts/test-bindings.sh
stage bash scripts/test-server.sh
stage bash scripts/fuzz.sh 20
stage bash scripts/build-cuda.sh
