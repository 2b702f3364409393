#!/usr/bin/env bash
# Rewrites the GGUF seeds of the fuzz targets (committed in fuzz/corpus/):
#   - the checker's small model and its one-value variants, exactly as
#     `gguf::check::example` writes them (a test in tests/bad_input.rs
#     fails when the committed copies are stale);
#   - the trainer's tiny model after one SFT step, exported by
#     `reckon-train export` as q8_0 and q4_0: real files llama.cpp runs.
# Needs the release build (bash scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
RT=./target/release/reckon-train
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
head -8 ../shared/data/gsm8k/train.jsonl > "$W/g.jsonl"
"$RT" data gsm8k --input "$W/g.jsonl" --out "$W/sft.jsonl" >/dev/null
cat > "$W/sft.toml" <<TOML
[model]
source = "tiny"
[data]
train = "$W/sft.jsonl"
max_seq_len = 256
[train]
steps = 1
batch_size = 2
grad_accum = 1
seed = 0
[checkpoint]
every = 1
TOML
"$RT" sft --config "$W/sft.toml" --out "$W/run" >/dev/null
for t in q8_0 q4_0; do
  "$RT" export --checkpoint "$W/run/checkpoints/step-00000001" --out "$W/trainer-tiny-$t.gguf" --type "$t" >/dev/null
  for target in gguf_check gguf_load; do cp "$W/trainer-tiny-$t.gguf" "fuzz/corpus/$target/"; done
done
RECKON_WRITE_SEEDS=1 cargo test --release --locked --workspace --test bad_input fuzz_seeds -q
ls -l fuzz/corpus/gguf_load
