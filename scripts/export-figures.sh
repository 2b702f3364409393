#!/usr/bin/env bash
# Issue 7's figures for the 0.5B default model, in one run on one machine:
# import the default GGUF as a trainer checkpoint, export it to each type
# (time and size), `reckon bench` every file side by side (decode tok/s), and
# greedy GSM8K answers of every file on the same questions compared with the
# F32 export's and the original's.
#
#   bash scripts/export-figures.sh [OUT_DIR] [TYPES] [QUESTIONS]
#
# Defaults: results/export-qwen2.5-coder-0.5b, "f32 f16 bf16 q8_0 q4_0 q4_k_m",
# 20. Needs the release build (scripts/setup.sh) and ~3 GB of free disk for
# the exported files, which are written to a temporary folder and deleted.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-results/export-qwen2.5-coder-0.5b}
types=${2:-f32 f16 bf16 q8_0 q4_0 q4_k_m}
questions=${3:-20}
threads=${THREADS:-2}
# The round-trip test's greedy budget (trainer/tests/export.rs).
think=160
answer=48

reckon=./target/release/reckon
train=./target/release/reckon-train
original=$("$reckon" info --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["path"])')
work=$(mktemp -d "${TMPDIR:-/tmp}/reckon-export-figures.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"

echo "==> import $original"
"$train" import --model "$original" --out "$work/ckpt"
ckpt="$work/ckpt/step-00000000"

models=("$original")
: > "$out/export.jsonl"
for t in $types; do
  echo "==> export $t"
  "$train" export --checkpoint "$ckpt" --out "$work/$t.gguf" --type "$t" --threads "$threads" --json \
    | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))' >> "$out/export.jsonl"
  models+=("$work/$t.gguf")
done

model_flags=()
for m in "${models[@]}"; do model_flags+=(--model "$m"); done

echo "==> reckon bench (one run, every file)"
"$reckon" bench "${model_flags[@]}" --threads "$threads" --repeat 1 --max-think 128 --json > "$out/bench.json"

echo "==> greedy answers on the first $questions GSM8K test questions (cap $think, answer $answer)"
rm -rf "$out/eval"
"$reckon" eval "${model_flags[@]}" --data ../shared/data/gsm8k/test-1000.jsonl --limit "$questions" \
  --budgets "$think" --max-answer "$answer" --threads "$threads" --out "$out/eval"

python3 - "$out" "$original" "$think" <<'EOF'
import json, os, sys
out, original, think = sys.argv[1], sys.argv[2], sys.argv[3]
orig_label = os.path.splitext(os.path.basename(original))[0]
exports = [json.loads(l) for l in open(os.path.join(out, "export.jsonl"))]
bench = {os.path.splitext(os.path.basename(r["model"]))[0]: r for r in json.load(open(os.path.join(out, "bench.json")))["models"]}

def records(label):
    path = os.path.join(out, "eval", "records", label, f"cap{think}.jsonl")
    return {r["id"]: r for r in map(json.loads, open(path))}

ref_orig, ref_f32 = records(orig_label), records("f32")
def agree(a, b, key):
    return sum(key(a[i]) == key(b[i]) for i in a), len(a)
answer = lambda r: r["extracted"]
text = lambda r: (r["thinking"], r["answer"])

rows = []
header = "| file | export s | MiB | decode tok/s | answers = F32 | answers = original | texts = original | correct |"
rows.append(header)
rows.append("|" + "---|" * 8)
for label, e in [(orig_label, None)] + [(x["type"], x) for x in exports]:
    rec = records(label)
    b = bench[label]
    fa, n = agree(rec, ref_f32, answer)
    oa, _ = agree(rec, ref_orig, answer)
    ta, _ = agree(rec, ref_orig, text)
    correct = sum(r["correct"] for r in rec.values())
    secs = f'{e["seconds"]:.1f}' if e else "—"
    rows.append(f"| {label} | {secs} | {b['file_mib']:.1f} | {b['bare_decode_tok_s']:.1f} | {fa}/{n} | {oa}/{n} | {ta}/{n} | {correct}/{n} |")
table = "\n".join(rows)
open(os.path.join(out, "table.md"), "w").write(table + "\n")
print(table)
EOF
