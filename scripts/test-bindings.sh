#!/usr/bin/env bash
# Builds the bindings library for this host, generates the Kotlin, Python and
# Swift bindings in library mode, and tests them for real against the default
# model: Kotlin (generated code + Android facade) compiled with kotlinc-jvm and
# run on the JVM with JNA; Python run with CPython; the Swift C header checked
# with clang. Prints each suite's "N passed, N failed"; fails on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/ccache-env.sh

KOTLIN_VERSION=2.4.20
TOOLS=.tools
OUT=target/bindings
start=$(date +%s)

# Same package set as setup.sh, so cargo reuses one llama.cpp build.
cargo build --release --locked --workspace
LIB=target/release/libreckon_ffi.so
MODEL=$(./target/release/reckon fetch-model --quiet)

rm -rf "$OUT"
for lang in kotlin python swift; do
  ./target/release/uniffi-bindgen generate --no-format --library "$LIB" --language "$lang" --out-dir "$OUT/$lang" >/dev/null
done

echo "==> Swift: the generated C header compiles (no Swift toolchain here: header checks only)"
# Each check that ran and passed is counted; a failing one stops the run.
swift_checks=0
clang -fsyntax-only -x c "$OUT/swift/ReckonFFI.h" && swift_checks=$((swift_checks + 1))
clang -fsyntax-only -x objective-c -fmodules -fmodule-map-file="$OUT/swift/ReckonFFI.modulemap" "$OUT/swift/ReckonFFI.h" \
  && swift_checks=$((swift_checks + 1))
echo "$swift_checks passed, 0 failed (C header as C and as an Objective-C module)" | tee "$OUT/swift.result"

echo "==> Python"
cp "$LIB" "$OUT/python/"
python3 bindings/tests/python/test_bindings.py "$OUT/python" "$MODEL" | tee "$OUT/python.result"

echo "==> Kotlin (JVM)"
KOTLINC="$TOOLS/node_modules/kotlin-compiler/bin/kotlinc-jvm"
if [ ! -x "$KOTLINC" ]; then
  npm install --silent --no-audit --no-fund --prefix "$TOOLS" "kotlin-compiler@$KOTLIN_VERSION"
fi
KLIB="$TOOLS/node_modules/kotlin-compiler/lib"
JNA=/usr/share/java/jna.jar
CP="$JNA:$KLIB/kotlinx-coroutines-core-jvm.jar"
mkdir -p target/kotlin-test
# A failed compile fails the run: no stale jar is ever run in its place.
rm -f target/kotlin-test/test.jar
if ! "$KOTLINC" -nowarn \
  "$OUT/kotlin/dev/reckon/ffi/reckon_ffi.kt" \
  android/src/main/kotlin/dev/reckon/Reckon.kt \
  bindings/tests/kotlin/ReckonTest.kt \
  -cp "$CP" -d target/kotlin-test/test.jar > target/kotlin-test/kotlinc.log 2>&1; then
  grep -v '^warning:' target/kotlin-test/kotlinc.log >&2
  echo "error: the Kotlin test did not compile" >&2
  exit 1
fi
java -Djna.library.path=target/release -cp "target/kotlin-test/test.jar:$CP:$KLIB/kotlin-stdlib.jar" ReckonTestKt "$MODEL" \
  | tee "$OUT/kotlin.result"

total=$(cat "$OUT"/*.result | awk '/^[0-9]+ passed, 0 failed/ { n += $1 } END { print n }')
echo "bindings tests took $(( $(date +%s) - start )) s"
echo "bindings: $total passed, 0 failed"
