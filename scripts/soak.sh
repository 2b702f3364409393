#!/usr/bin/env bash
# Soak (issue 18): 8 concurrent solves on one loaded model for MINUTES
# (default 10) in each shape, threads (Python bindings) and batched slots
# (`reckon serve`), with short budgets and random cancels. Prints and writes
# the figures (solves, cancels, errors, RSS of the first and last minute)
# to target/soak.json; fails on any error. Run it alone: it is a measurement.
#
#   bash scripts/soak.sh [MINUTES]            # SOAK_SHAPES=threads or slots: one shape
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-10}
bash scripts/deps.sh
. scripts/ccache-env.sh
cargo build --release --locked --workspace
MODEL=$(./target/release/reckon fetch-model --quiet)
OUT=target/bindings/soak
rm -rf "$OUT" && mkdir -p "$OUT"
./target/release/uniffi-bindgen generate --no-format --library target/release/libreckon_ffi.so --language python --out-dir "$OUT" >/dev/null
cp target/release/libreckon_ffi.so "$OUT/"
VENV=.tools/server-venv
[ -x "$VENV/bin/python" ] || { python3 -m venv "$VENV"; "$VENV/bin/pip" install --quiet "httpx==0.28.1"; }
"$VENV/bin/python" scripts/soak.py "$OUT" "$MODEL" ../shared/data/gsm8k/test-1000.jsonl ./target/release/reckon "$MINUTES" target/soak.json
