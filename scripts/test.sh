#!/usr/bin/env bash
# The whole test suite: unit tests, engine and CLI tests against the real
# default model (fetched and verified if missing). CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh

cargo test --release --locked --workspace
