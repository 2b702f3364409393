#!/usr/bin/env bash
# The shipped 0.5B trainer configs, run for real on this machine: 2 steps of
# SFT (trainer/configs/sft-qwen2.5-0.5b-lora.toml) on the default model, then
# 2 steps of GRPO (trainer/configs/grpo-gsm8k-0.5b-lora.toml) from that SFT
# checkpoint, each printing its step times and the process's peak RSS.
#
#   bash scripts/trainer-0.5b.sh            # the configs as shipped
#   GRPO_SMALL=1 bash scripts/trainer-0.5b.sh
#       # GRPO at the memory target's size instead: 4 prompts x 8
#       # completions x up to 320 tokens (256 thinking + 64 answer)
#   GRPO_ONLY=1 ...   # reuse the SFT checkpoint of an earlier run
#
# Needs a release build (bash scripts/setup.sh) and writes under
# runs/configs-0.5b/ (OUT= to change). Nothing else runs beside it: the
# figures are timings.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/ccache-env.sh
RT=./target/release/reckon-train
OUT=${OUT:-runs/configs-0.5b}
[ -x "$RT" ] || cargo build --release --locked --workspace
[ -f "$HOME/.cache/reckon/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf" ] || ./target/release/reckon fetch-model
mkdir -p runs "$OUT"
[ -f runs/gsm8k-sft.jsonl ] || "$RT" data gsm8k --input ../shared/data/gsm8k/train.jsonl --out runs/gsm8k-sft.jsonl

peak() { # JSON_OUT COMMAND... : run it (stdout to JSON_OUT), print its peak RSS
  local json=$1; shift
  /usr/bin/time -f '%M' -o "$OUT/rss.txt" "$@" > "$json"
  echo "peak RSS: $(( $(cat "$OUT/rss.txt") / 1024 )) MiB"
}
steps() { # METRICS.jsonl
  python3 -c 'import json,sys
for l in open(sys.argv[1]):
    m = json.loads(l)
    print("step %d: %s" % (m["step"], ", ".join("%s %.4g" % (k, v) for k, v in m.items() if k in ("loss", "reward", "mean_length", "tokens_per_s", "rollout_tokens_per_s", "train_tokens_per_s") )))' "$1"
}

if [ -z "${GRPO_ONLY:-}" ] || ! ls -d "$OUT"/sft/checkpoints/step-* >/dev/null 2>&1; then
  echo "==> SFT, 2 steps of $(basename trainer/configs/sft-qwen2.5-0.5b-lora.toml)"
  t0=$(date +%s)
  peak "$OUT/sft.json" "$RT" sft --config trainer/configs/sft-qwen2.5-0.5b-lora.toml --out "$OUT/sft" --fresh --stop-after 2 --json
  echo "wall: $(( $(date +%s) - t0 )) s (load and 2 steps)"
  steps "$OUT/sft/metrics.jsonl"
fi

ckpt=$(ls -d "$PWD/$OUT"/sft/checkpoints/step-* | tail -1)
sed -e "s|^source = .*|source = \"$ckpt\"|" -e "s|^train = .*|train = \"$PWD/../shared/data/gsm8k/train.jsonl\"|" \
  trainer/configs/grpo-gsm8k-0.5b-lora.toml > "$OUT/grpo.toml"
if [ -n "${GRPO_SMALL:-}" ]; then
  sed -i -e 's/^prompts_per_step = .*/prompts_per_step = 4/' -e 's/^max_thinking_tokens = .*/max_thinking_tokens = 256/' "$OUT/grpo.toml"
fi
echo "==> GRPO, 2 steps of $(basename trainer/configs/grpo-gsm8k-0.5b-lora.toml)${GRPO_SMALL:+ (4 prompts, 256 thinking tokens)} from $ckpt"
t0=$(date +%s)
peak "$OUT/grpo.json" "$RT" grpo --config "$OUT/grpo.toml" --out "$OUT/grpo" --fresh --stop-after 2 --json
echo "wall: $(( $(date +%s) - t0 )) s (load and 2 steps)"
steps "$OUT/grpo/metrics.jsonl"
