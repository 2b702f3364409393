#!/usr/bin/env bash
# Fuzz every target in fuzz/ for SECONDS each (default 30), starting from the
# committed corpus (fuzz/corpus/TARGET); new inputs go to a scratch folder,
# so the repository's corpus stays as committed. Exits non-zero on the first
# crash, leak, timeout or out-of-memory (the input is in fuzz/artifacts/).
#
#   bash scripts/fuzz.sh            # 30 s per target (what CI runs)
#   bash scripts/fuzz.sh 600        # 10 minutes per target
#   bash scripts/fuzz.sh 60 budget  # some targets only
#   RUNS=1000000 bash scripts/fuzz.sh 3600   # stop each at 1M executions
#
# cargo-fuzz needs unstable rustc flags (-Zsanitizer=address). The stable
# toolchain ships the sanitizer runtimes, so RUSTC_BOOTSTRAP=1 lets it take
# them: no nightly toolchain (which could not be fetched here) is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/ccache-env.sh
SECONDS_EACH=${1:-30}
shift || true
TARGETS=("$@")
ALL_TARGETS=0
[ ${#TARGETS[@]} -gt 0 ] || { TARGETS=(gguf_check gguf_load answer template budget); ALL_TARGETS=1; }

# Pinned, like every other tool the scripts install.
if ! cargo fuzz --version 2>/dev/null | grep -q "0.13.2"; then
  cargo install cargo-fuzz --version 0.13.2 --locked
fi
export RUSTC_BOOTSTRAP=1
# llama.cpp's C/C++ in this build (RelWithDebInfo: cargo-fuzz asks for line
# tables) at the flags OSS-Fuzz gives sanitizer builds, -O1 with line tables
# and frame pointers, instead of CMake's -O2 -g: with ASan, llama-model.cpp
# (the largest file) compiles in 12.0 s instead of 29.1 s on a 2.1 GHz Xeon.
for lang in C CXX; do
  export "CMAKE_${lang}_FLAGS_RELWITHDEBINFO=-O1 -g1 -fno-omit-frame-pointer -DNDEBUG"
done
cd fuzz
cargo fuzz build -O
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"; rm -f /dev/shm/reckon-fuzz-*.gguf' EXIT
for t in "${TARGETS[@]}"; do
  mkdir -p "$SCRATCH/$t"
  # Each execution gets at most 10 s and 2 GiB. GGUF inputs may grow to
  # the largest seed (the trainer's tiny q8_0 model, 126 KiB); text inputs
  # to 8 KiB (a long chat template or answer).
  case $t in gguf_*) max_len=131072 ;; *) max_len=8192 ;; esac
  rc=0
  cargo fuzz run -O "$t" "$SCRATCH/$t" "corpus/$t" -- \
    -max_total_time="$SECONDS_EACH" ${RUNS:+-runs=$RUNS} -timeout=10 -rss_limit_mb=2048 -max_len=$max_len \
    -print_final_stats=1 > "$SCRATCH/$t.log" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "fuzz: $t failed (exit $rc; the input is in fuzz/artifacts/$t)"
    tail -60 "$SCRATCH/$t.log"
    exit 1
  fi
  runs=$(grep -o "stat::number_of_executed_units: *[0-9]*" "$SCRATCH/$t.log" | grep -o "[0-9]*$" || echo "?")
  secs=$(grep -o "Done [0-9]* runs in [0-9]* second" "$SCRATCH/$t.log" | grep -o "in [0-9]*" | grep -o "[0-9]*" || echo "$SECONDS_EACH")
  echo "fuzz: $t: $runs executions in $secs s, 0 crashes"
done
# A run of every target for at least CI's 20 s each lets the test command
# skip this stage while the fuzzed code stays as it is (scripts/built.sh).
cd ..
if [ "$ALL_TARGETS" = 1 ] && [ "$SECONDS_EACH" -ge 20 ] && [ -z "${RUNS:-}" ]; then
  bash scripts/built.sh record fuzz "$SECONDS"
fi
