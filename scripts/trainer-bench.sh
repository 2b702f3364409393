#!/usr/bin/env bash
# Trainer speed and memory on the 0.5B shape (random weights), 2 threads,
# each configuration in its own process (so its peak RSS is its own), MFU
# against the f32 matmul peak each run measures: results/trainer-speed/.
#   bash scripts/trainer-bench.sh
# Run nothing else beside it: the figures are timings.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/ccache-env.sh
RT=./target/release/reckon-train
OUT=results/trainer-speed
[ -x "$RT" ] || cargo build --release --locked --workspace
mkdir -p "$OUT"
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
run() { # NAME ARGS...
  local name=$1; shift
  echo "==> $name: reckon-train bench $*"
  "$RT" bench --shapes 0.5b "$@" --json > "$OUT/$name.json"
}
run sft-lora16 --mode sft --lora 16 --batch 2 --seq-len 512 --steps 3
run sft-full --mode sft --batch 2 --seq-len 512 --steps 3
run grpo-lora16 --mode grpo --lora 16 --batch 32 --seq-len 320 --steps 1 --micro-batch-tokens 2048
python3 - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
rows = []
for name in ["sft-lora16", "sft-full", "grpo-lora16"]:
    d = json.loads((out / f"{name}.json").read_text())
    r = d["rows"][0]
    rows.append(f"| {name} | {r['mode']} | {'r=%d' % r['lora_rank'] if r['lora_rank'] else 'full'} | {r['batch']}×{r['seq_len']} | "
                f"{r['step_s']:.1f} | {r['trained_tokens_per_s']:.1f} | {r['flops']/1e9:.1f} | {d['peak_flops']/1e9:.1f} | "
                f"{100*r['mfu']:.1f}% | {r['peak_rss_mib']/1024:.2f} GiB |")
table = "| run | mode | LoRA | batch×seq | step s | trained tok/s | GFLOP/s | measured peak GFLOP/s | MFU | peak RSS |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n" + "\n".join(rows)
(out / "table.md").write_text(table + "\n")
print(table)
PY
