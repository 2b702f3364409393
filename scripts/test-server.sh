#!/usr/bin/env bash
# `reckon serve` tested for real: the default model served on loopback
# (s1 format, 4 slots, an API key), driven by the `openai` Python package
# (pinned, into a venv under .tools/) and by Debian's chromium through
# playwright-core (npm, pinned). Figures (load test) and screenshots land in
# target/server-test/. Prints each suite's "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/ccache-env.sh

OPENAI_VERSION=3.57.0
HTTPX_VERSION=0.28.1
PLAYWRIGHT_VERSION=1.65.1
TOOLS=.tools
OUT=target/server-test
rm -rf "$OUT" && mkdir -p "$OUT"

# Same package set as setup.sh, so cargo reuses one build.
cargo build --release --locked --workspace
MODEL=$(./target/release/reckon fetch-model --quiet)

VENV="$TOOLS/server-venv"
if ! "$VENV/bin/python" -c "import openai, httpx; assert openai.__version__ == '$OPENAI_VERSION'" 2>/dev/null; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "openai==$OPENAI_VERSION" "httpx==$HTTPX_VERSION"
fi
if [ ! -d "$TOOLS/node_modules/playwright-core" ] || ! grep -q "\"version\": \"$PLAYWRIGHT_VERSION\"" "$TOOLS/node_modules/playwright-core/package.json"; then
  npm install --silent --no-audit --no-fund --prefix "$TOOLS" "playwright-core@$PLAYWRIGHT_VERSION"
fi

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
KEY="test-key-$RANDOM"
BASE="http://127.0.0.1:$PORT"
RECKON_API_KEY="$KEY" ./target/release/reckon serve --model "$MODEL" --format s1 --port "$PORT" \
  --parallel 4 --slot-ctx 2048 --max-queue 8 > "$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  curl -sf "$BASE/health" >/dev/null 2>&1 && break
  kill -0 $SERVER 2>/dev/null || { cat "$OUT/server.log" >&2; echo "error: the server did not start" >&2; exit 1; }
  sleep 0.2
done

echo "==> openai client"
"$VENV/bin/python" tests/server/test_server.py "$BASE" "$KEY" "$SERVER" "$OUT" | tee "$OUT/python.result"
echo "==> browser (chromium, playwright-core)"
NODE_PATH="$TOOLS/node_modules" node tests/server/page.test.cjs "$BASE" "$KEY" "$OUT" | tee "$OUT/page.result"

# Ctrl-C (SIGINT) shuts the server down cleanly.
kill -INT $SERVER
for _ in $(seq 1 50); do kill -0 $SERVER 2>/dev/null || break; sleep 0.1; done
if kill -0 $SERVER 2>/dev/null; then echo "error: the server ignored SIGINT" >&2; exit 1; fi
wait $SERVER || { echo "error: the server exited with $? on SIGINT" >&2; exit 1; }
trap - EXIT
total=$(cat "$OUT"/*.result | awk '/^[0-9]+ passed, 0 failed$/ { n += $1 } END { print n + 0 }')
echo "server: $total passed, 0 failed"
