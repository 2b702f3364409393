#!/usr/bin/env bash
# The whole test suite: unit tests, engine, CLI and eval tests against the
# real default model (fetched and verified if missing), then the Kotlin,
# Python and Swift-header bindings tests, then the server's (openai client, browser). CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh

cargo test --release --locked --workspace
bash scripts/test-bindings.sh
bash scripts/test-server.sh
