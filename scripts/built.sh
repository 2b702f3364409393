#!/usr/bin/env bash
# Records and checks which tree a slow build stage last passed on, so the
# test command runs that stage only when what it compiles has changed.
#
#   bash scripts/built.sh fingerprint STAGE   # print the inputs' fingerprint
#   bash scripts/built.sh check STAGE         # exit 0 if .ci/built/STAGE holds it
#   bash scripts/built.sh record STAGE SECS   # write .ci/built/STAGE (commit it)
#
# STAGE is `cuda` (scripts/build-cuda.sh: the trainer's CUDA build, ~16 min
# cold on 2 cores) or `fuzz` (scripts/fuzz.sh: the sanitizer build of
# llama.cpp and the fuzz runs, ~7-10 min). The fingerprint is the SHA-256 of
# the contents of every file the stage compiles or runs (tracked, and
# untracked ones git does not ignore, so a session's uncommitted edits
# count), listed below. Any change to them, however small, makes the test
# command run the stage again; a stage that passes records the new
# fingerprint, and the session commits .ci/built/STAGE with its change.
set -euo pipefail
cd "$(dirname "$0")/.."

inputs() {
  case $1 in
    cuda) echo Cargo.toml Cargo.lock .cargo src bindings/Cargo.toml trainer/Cargo.toml trainer/src \
      trainer/tests/gpu.rs trainer/tests/common scripts/build-cuda.sh scripts/cuda-toolkit.sh \
      scripts/cuda-requirements.txt scripts/ccache-env.sh ;;
    fuzz) echo Cargo.toml .cargo src fuzz scripts/fuzz.sh scripts/ccache-env.sh ;;
    *) echo "built.sh: unknown stage '$1' (cuda or fuzz)" >&2; exit 2 ;;
  esac
}

fingerprint() {
  # shellcheck disable=SC2046
  git ls-files -z --cached --others --exclude-standard -- $(inputs "$1") \
    | sort -z -u | xargs -0 sha256sum | sha256sum | cut -d' ' -f1
}

cmd=${1:-}; stage=${2:-}
[ -n "$stage" ] || { echo "usage: built.sh fingerprint|check|record STAGE [SECS]" >&2; exit 2; }
case $cmd in
  fingerprint) fingerprint "$stage" ;;
  check)
    want=$(fingerprint "$stage")
    have=$(sed -n 's/^fingerprint: //p' ".ci/built/$stage" 2>/dev/null || true)
    if [ "$want" = "$have" ]; then
      echo "==> $stage: skipped; its inputs are unchanged since the run .ci/built/$stage records:"
      sed 's/^/    /' ".ci/built/$stage"
      exit 0
    fi
    echo "==> $stage: its inputs changed since .ci/built/$stage (${have:-none recorded}); running it"
    exit 1 ;;
  record)
    mkdir -p .ci/built
    {
      echo "fingerprint: $(fingerprint "$stage")"
      echo "inputs: $(inputs "$stage")"
      echo "passed: $(date -u +%Y-%m-%dT%H:%M:%SZ) in ${3:-?} s on $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), $(nproc) cores"
    } > ".ci/built/$stage"
    echo "==> recorded .ci/built/$stage (commit it with the change it was built on)" ;;
  *) echo "usage: built.sh fingerprint|check|record STAGE [SECS]" >&2; exit 2 ;;
esac
