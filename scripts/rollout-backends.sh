#!/usr/bin/env bash
# Issue 15's figure: one GRPO step on the real default model with rollouts
# on the runtime's engine, then the same step (same SFT checkpoint, seed,
# prompts and config) with rollouts on the trainer's own sampler, back to
# back in one run. Shape: LoRA r=16 on the claim's SFT adapters
# (results/claim-gsm8k-0.5b/checkpoints/sft), 4 prompts x 8 completions,
# thinking cap 256 (+64 answer tokens), temperature 0.7.
#
#   bash scripts/rollout-backends.sh          # both backends (~20 min)
#   BACKENDS=engine bash scripts/rollout-backends.sh
#
# Writes results/trainer-speed/rollout-backends.json (each backend's step
# metrics and peak RSS, and the ratio of their rollout tok/s). Nothing else
# may run beside it: the figures are timings.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/ccache-env.sh
RT=./target/release/reckon-train
OUT=${OUT:-runs/rollout-backends}
RES=results/trainer-speed/rollout-backends.json
[ -x "$RT" ] || cargo build --release --locked --workspace
[ -f "$HOME/.cache/reckon/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf" ] || ./target/release/reckon fetch-model
mkdir -p "$OUT"

ckpt=$PWD/results/claim-gsm8k-0.5b/checkpoints/sft/step-00000096
for b in ${BACKENDS:-engine trainer}; do
  sed -e "s|^source = .*|source = \"$ckpt\"|" \
      -e "s|^train = .*|train = \"$PWD/../shared/data/gsm8k/train.jsonl\"|" \
      -e "s|^backend = .*|backend = \"$b\"|" \
      -e "s|^max_thinking_tokens = \[.*|max_thinking_tokens = 256|" \
      -e "s|^steps = .*|steps = 1|" \
      results/claim-gsm8k-0.5b/grpo.toml > "$OUT/$b.toml"
  echo "==> one GRPO step, rollouts on the $b backend"
  /usr/bin/time -f '%M' -o "$OUT/$b.rss" "$RT" grpo --config "$OUT/$b.toml" --out "$OUT/$b" --fresh --json > "$OUT/$b.json"
done

python3 - "$OUT" "$RES" <<'EOF'
import json, os, sys, datetime, platform
out, res = sys.argv[1:]
report = {"date": datetime.date.today().isoformat(),
          "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine()),
          "shape": "LoRA r16 on the claim's SFT adapters, 4 prompts x 8 completions, cap 256 + 64 answer tokens, temperature 0.7",
          "backends": {}}
if os.path.exists(res):
    report["backends"] = json.load(open(res)).get("backends", {})
for b in ("engine", "trainer"):
    m = os.path.join(out, b, "metrics.jsonl")
    if not os.path.exists(m) or not os.path.exists(os.path.join(out, b + ".rss")):
        continue
    step = json.loads(open(m).read().splitlines()[-1])
    step["peak_rss_gib"] = round(int(open(os.path.join(out, b + ".rss")).read().split()[-1]) / 2**20, 2)
    step["date"] = report["date"]
    report["backends"][b] = step
bk = report["backends"]
if "engine" in bk and "trainer" in bk:
    report["rollout_speedup"] = bk["engine"]["rollout_tokens_per_s"] / bk["trainer"]["rollout_tokens_per_s"]
with open(res, "w") as f:
    json.dump(report, f, indent=1)
for b, s in bk.items():
    mismatch = (f", mismatch mean {s['mismatch_mean']:.4f} max {s['mismatch_max']:.3f} k3 {s['mismatch_k3']:.2e}"
                if "mismatch_mean" in s else "")
    print(f"{b}: rollouts {s['rollout_tokens_per_s']:.1f} tok/s, train {s['train_tokens_per_s']:.1f} tok/s, "
          f"step {s['rollout_s'] + s['train_s']:.0f} s (rollouts {s['rollout_s']:.0f} s), mean length {s['mean_length']:.0f}{mismatch}, peak RSS {s['peak_rss_gib']} GiB")
if "rollout_speedup" in report:
    print(f"engine / trainer rollout tok/s: {report['rollout_speedup']:.2f}x")
EOF
