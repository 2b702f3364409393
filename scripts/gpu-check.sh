#!/usr/bin/env bash
# What to run when a GPU machine is lent (CUDA 13 driver and runtime there,
# no Rust toolchain, no network): the CUDA build of scripts/build-cuda.sh,
# carried in target/cuda (two stripped, gzipped binaries, about 40 MB).
#
#   bash scripts/build-cuda.sh                 # here, first
#   bash scripts/gpu-check.sh                  # there; about 5 minutes
#
# It runs the GPU tests (trainer/tests/gpu.rs: CUDA loss and gradients
# equal the CPU's on a tiny model, bf16 stays close to f32, a short SFT then
# GRPO run on CUDA with a resume), then `reckon-train bench --device cuda`
# for the 0.5B shape (random weights, nothing else travels): SFT with LoRA
# and full fine-tuning, and the GRPO update with LoRA, in bf16 (and LoRA SFT
# in f32 beside it). Everything it measures goes to one JSON file,
# $OUT/gpu-check.json (or target/gpu-check/ without $OUT), with the raw
# logs beside it. Exit status: that of the tests, or 1 if a bench failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-target/gpu-check}
mkdir -p "$out"
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
for f in reckon-train gpu-tests; do
  [ -f "target/cuda/$f.gz" ] || { echo "gpu-check.sh: target/cuda/$f.gz is missing: run scripts/build-cuda.sh and carry target/cuda" >&2; exit 2; }
  gunzip -c "target/cuda/$f.gz" > "$bin/$f" && chmod +x "$bin/$f"
done

# The binaries link cuBLAS, cuRAND, NVRTC and the CUDA runtime (13.x): find
# them in the usual toolkit places or a pip install of NVIDIA's wheels.
libdirs=()
for d in /usr/local/cuda/lib64 /usr/local/cuda-13*/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
  /usr/lib/x86_64-linux-gnu $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null | sed 's#\([^ ]*\)#\1/nvidia/cu13/lib#g'); do
  [ -d "$d" ] && ls "$d"/libcublas.so.13* >/dev/null 2>&1 && libdirs+=("$d")
done
if [ ${#libdirs[@]} -gt 0 ]; then
  LD_LIBRARY_PATH=$(IFS=:; echo "${libdirs[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export LD_LIBRARY_PATH
fi
ldd "$bin/reckon-train" > "$out/ldd.txt" 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader > "$out/gpu.txt" 2>&1
nvidia-smi > "$out/nvidia-smi.txt" 2>&1

t0=$SECONDS
timeout 300 "$bin/gpu-tests" --test-threads=1 > "$out/tests.log" 2>&1
tests_rc=$?
tests_s=$((SECONDS - t0))

bench_rc=0
bench() {
  local name=$1; shift
  local t=$SECONDS
  if timeout 120 "$bin/reckon-train" bench --device cuda --shapes 0.5b --steps 3 --json "$@" > "$out/bench-$name.json" 2> "$out/bench-$name.log"; then
    echo "bench $name: $((SECONDS - t)) s"
  else
    echo "bench $name: failed (rc $?) after $((SECONDS - t)) s"; bench_rc=1
  fi
}
bench sft-lora-bf16 --mode sft --lora 16 --batch 8 --seq-len 512
bench sft-lora-f32 --mode sft --lora 16 --batch 8 --seq-len 512 --dtype f32
bench sft-full-bf16 --mode sft --batch 8 --seq-len 512
bench grpo-lora-bf16 --mode grpo --lora 16 --batch 32 --seq-len 512 --micro-batch-tokens 8192

python3 - "$out" "$tests_rc" "$tests_s" "$SECONDS" <<'EOF'
import json, os, re, sys
out, tests_rc, tests_s, wall = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
read = lambda f: open(os.path.join(out, f), errors="replace").read() if os.path.exists(os.path.join(out, f)) else ""
log = read("tests.log")
tests = [{"name": n, "result": r} for n, r in re.findall(r"^test (\S+) \.\.\. (\w+)", log, re.M)]
bench = {}
for f in sorted(os.listdir(out)):
    if f.startswith("bench-") and f.endswith(".json"):
        try:
            bench[f[6:-5]] = json.loads(read(f))
        except ValueError:
            bench[f[6:-5]] = {"error": read(f[:-5] + ".log")[-2000:]}
report = {
    "gpu": read("gpu.txt").strip(),
    "missing_libraries": re.findall(r"^\s*(\S+) => not found", read("ldd.txt"), re.M),
    "tests": tests,
    "tests_rc": tests_rc,
    "tests_s": tests_s,
    "tests_tail": log[-3000:] if tests_rc else "",
    "bench": bench,
    "wall_s": wall,
}
json.dump(report, open(os.path.join(out, "gpu-check.json"), "w"), indent=1)
print(json.dumps({"tests": tests, "tests_rc": tests_rc, "missing_libraries": report["missing_libraries"]}, indent=1))
for k, v in bench.items():
    for r in v.get("rows", []):
        print(f"{k}: step {r['step_s']:.3f} s, {r['trained_tokens_per_s']:.0f} trained tok/s, MFU {100*r['mfu']:.1f}%")
EOF
[ "$tests_rc" -eq 0 ] || exit "$tests_rc"
exit "$bench_rc"
