#!/usr/bin/env python3
"""The ARM64 checks of scripts/arm64.sh: each cross-built `reckon` runs under
qemu-aarch64 beside this host's build on the real default model.

For every flavour (an ARM64 build and the CPU qemu emulates for it):
  info      `reckon info --json` agrees with the host's
  tokens    greedy solves of 5 GSM8K train questions: the prompt and every
            token after it compared with the host's (where the kernels round
            differently, the first differing position), and the extracted
            answers compared. Where a greedy path parts from the host's, the
            same question is sampled on both sides at temperature 1 over the
            whole softmax with one seed: each token's ln p is then the
            model's own, and along the shared tokens the largest |Δ ln p|
            must be within the rounding scale (below)
  floor     a thinking floor on a question the model ends early: "Wait" is
            injected, and the tokens equal the host's (or agree as above)
  cap       a cap of 20: thinking stops at exactly 20 tokens (injected
            included) and the answer is forced
  cancel    Ctrl-C (SIGINT) during thinking: exit 130, the partial result
            printed with finish "cancelled", and how many tokens came after
  python    the bindings' Python test run by an ARM64 CPython (Debian's
            arm64 packages) against the ARM64 library, when given
The rounding scale: a portable x86-64 build of the same commit (--calibrate
BIN, e.g. x86-64-v3: AVX2, no AVX-512 or AMX) measured against the host the
same way, natively. Two correct x86 builds part where their kernels round
differently; the largest |Δ ln p| between them is what rounding does, and an
ARM build may differ from the host by no more. A run without flavours only
measures the scale and judges the stored flavours again.

Writes OUT/report.json and OUT/report.md; exits 1 if a check fails.

  arm64.py HOST_RECKON MODEL TRAIN_JSONL OUT [--calibrate X86_BIN] [FLAVOUR=BIN=CPU[=PYTHON_DIR] ...]
"""
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time

QEMU_LIBS = "/usr/aarch64-linux-gnu"
THREADS = "2"
# The per-question bounds: short, since emulation is slow (about a token a
# second); the cap forces most answers, which is itself a check of the cap.
# Ends its thinking after about 7 tokens (tests/common/mod.rs SHORT).
SHORT = "What is 2 + 3? Reply with only the number."
TOKENS_ARGS = ["--max-think", "48", "--max-answer", "24"]
# Sampling with nothing cut from the softmax (top-k 0, top-p 1, min-p 0) at
# temperature 1: a sampled token's recorded ln p is the model's log-softmax.
SAMPLED_ARGS = ["--temperature", "1", "--top-k", "0", "--top-p", "1", "--min-p", "0", "--seed", "7"]
# The rounding scale when no calibration was measured: a guess, fixed before
# the first run; two x86 builds turned out to differ by up to 0.27 nats here.
LOGPROB_TOLERANCE = 0.1
FLOOR_ARGS = ["--min-think", "16", "--max-think", "32", "--max-answer", "8"]


def qemu(cpu, binary, env=None):
    if cpu == "native":  # the script's own check: a host binary, no emulation
        return [binary]
    cmd = ["qemu-aarch64", "-cpu", cpu, "-L", QEMU_LIBS]
    for k, v in (env or {}).items():
        cmd += ["-E", f"{k}={v}"]
    return cmd + [binary]


def run_json(cmd, timeout=3600):
    t = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    secs = time.monotonic() - t
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {out.returncode}: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout), secs


def solve(prefix, model, question, extra):
    return run_json(prefix + ["solve", "--json", "--token-ids", "--threads", THREADS, "--model", model] + extra + [question])


def solve_both(host, prefix, model, question, args):
    """The same solve on the host and on the other build: both results, and
    the other build's seconds."""
    h, _ = solve(host, model, question, args)
    a, secs = solve(prefix, model, question, args)
    return h, a, secs


def ids(result):
    return [t["id"] for t in result["trace"]["tokens"]]


def first_difference(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def compare(host, arm):
    """Token-by-token agreement of two solves of one question."""
    diff = first_difference(ids(host), ids(arm))
    return {
        "prompt_equal": host["trace"]["prompt"] == arm["trace"]["prompt"],
        "tokens_equal": diff is None,
        "first_difference": diff,
        "tokens": [len(ids(host)), len(ids(arm))],
        "extracted": [host["extracted_answer"], arm["extracted_answer"]],
        "extracted_equal": host["extracted_answer"] == arm["extracted_answer"],
    }


def measure_logprobs(host, prefix, model, question, args):
    """One sampled solve on each side (SAMPLED_ARGS, same seed): the log-probs
    of the tokens both drew, position by position, until the paths part."""
    h, a, secs = solve_both(host, prefix, model, question, args + SAMPLED_ARGS)
    row = compare(h, a)
    shared = len(ids(h)) if row["tokens_equal"] else row["first_difference"]
    deltas = [abs(x["logprob"] - y["logprob"])
              for x, y in zip(h["trace"]["tokens"][:shared], a["trace"]["tokens"][:shared])
              if x["logprob"] is not None and y["logprob"] is not None]
    worst = max(deltas) if deltas else None
    return {"prompt_equal": row["prompt_equal"], "shared_tokens": shared, "compared": len(deltas),
            "max_abs_delta": round(worst, 5) if deltas else None,
            "mean_abs_delta": round(sum(deltas) / len(deltas), 6) if deltas else None,
            "seconds": round(secs, 1)}


def check_info(host, prefix, model):
    h, _ = run_json(host + ["info", "--json", "--model", model])
    a, secs = run_json(prefix + ["info", "--json", "--model", model])
    # Where the two may differ: nothing about the file or the model should.
    keys = sorted(k for k in h if k not in ("load_ms", "threads", "default_threads", "performance_cores"))
    differ = [k for k in keys if h[k] != a.get(k)]
    return {"ok": not differ, "differing_fields": differ, "seconds": round(secs, 1), "arm": a}


def check_tokens(host, prefix, model, questions):
    rows = []
    for q in questions:
        h, a, secs = solve_both(host, prefix, model, q, TOKENS_ARGS)
        row = compare(h, a)
        thinking = a["thinking_tokens"] + a["injected_tokens"]
        row["cap_exact"] = (not a["forced_end"]) or thinking == 48
        row["decode_tok_s"] = round(a["timings"]["decode_tok_s"], 2)
        row["prefill_tok_s"] = round(a["timings"]["prefill_tok_s"], 2)
        row["seconds"] = round(secs, 1)
        if not row["tokens_equal"]:
            row["logprobs"] = measure_logprobs(host, prefix, model, q, TOKENS_ARGS)
        rows.append(row)
        print(f"    tokens: {row}", flush=True)
    return {"questions": rows, "answers_agree": sum(r["extracted_equal"] for r in rows)}


def check_floor(host, prefix, model):
    h, a, secs = solve_both(host, prefix, model, SHORT, FLOOR_ARGS)
    row = compare(h, a)
    row.update(extensions=a["extensions"], injected_tokens=a["injected_tokens"], seconds=round(secs, 1),
               floor_held=a["extensions"] >= 1 and a["thinking_tokens"] + a["injected_tokens"] >= 16)
    if not row["tokens_equal"]:
        row["logprobs"] = measure_logprobs(host, prefix, model, SHORT, FLOOR_ARGS)
    return row


def calibrate(host, portable, model, questions):
    """The portable x86 build against the host: the greedy paths and the
    sampled log-probs of every question and the floor's, natively."""
    rows = []
    for q, args in [(q, TOKENS_ARGS) for q in questions] + [(SHORT, FLOOR_ARGS)]:
        row = compare(*solve_both(host, [portable], model, q, args)[:2])
        row["logprobs"] = measure_logprobs(host, [portable], model, q, args)
        rows.append(row)
        print(f"    calibration: {row}", flush=True)
    scale = max(r["logprobs"]["max_abs_delta"] for r in rows if r["logprobs"]["max_abs_delta"] is not None)
    return {"binary": portable, "rows": rows, "scale": scale}


def parted_by_rounding(row, scale):
    """A greedy path equal to the host's, or one that parted while the sampled
    log-probs stayed within the rounding scale. A run from before the
    log-prob check (no "logprobs") is judged as it was then: by its answer."""
    if row["tokens_equal"]:
        return True
    lp = row.get("logprobs")
    if lp is None:
        return row["extracted_equal"]
    lp["ok"] = lp["prompt_equal"] and lp["compared"] >= 8 and lp["max_abs_delta"] <= scale
    return lp["ok"]


def judge(r, scale):
    """Each check's verdict (the measurements stay as they were taken)."""
    t = r["tokens"]
    # The answers are reported, not required: at a 48-token cap the answer
    # is forced mid-working, so a path that parted answers another partial sum.
    t["ok"] = all([q["prompt_equal"] and q["cap_exact"] and parted_by_rounding(q, scale) for q in t["questions"]])
    fl = r["floor"]
    fl["ok"] = fl["floor_held"] and parted_by_rounding(fl, scale)
    return [k for k in ("info", "tokens", "floor", "cap", "cancel", "python") if k in r and not r[k]["ok"]]


def check_cap(prefix, model, question):
    a, secs = solve(prefix, model, question, ["--max-think", "20", "--max-answer", "8"])
    thinking = a["thinking_tokens"] + a["injected_tokens"]
    return {"ok": a["forced_end"] and thinking == 20, "thinking_tokens": thinking, "forced_end": a["forced_end"],
            "answer_starts": a["answer"][:40], "seconds": round(secs, 1)}


def check_cancel(prefix, model, question):
    """SIGINT after the 5th thinking event; the CLI must stop within a step or two."""
    cmd = prefix + ["solve", "--stream-json", "--threads", THREADS, "--min-think", "1000", "--max-think", "2000",
                    "--model", model, question]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, after, sent, result = 0, 0, None, None
    for line in p.stdout:
        e = json.loads(line)
        if e["type"] in ("thinking", "answer", "injected"):
            if sent is None:
                seen += 1
                if seen == 5:
                    sent = time.monotonic()
                    p.send_signal(signal.SIGINT)
            else:
                after += 1
        if e["type"] == "result":
            result = e["result"]
    rc = p.wait(timeout=600)
    ms = (time.monotonic() - sent) * 1000 if sent else None
    finish = result["finish"] if result else None
    return {"ok": rc == 130 and finish == "cancelled" and after <= 2, "exit_code": rc, "finish": finish,
            "events_after_signal": after, "ms_to_exit": round(ms) if ms else None}


def check_python(cpu, python_dir, bindings_dir, model):
    py = os.path.join(python_dir, "usr/bin/python3.11")
    libs = ":".join(os.path.join(python_dir, d) for d in ("usr/lib/aarch64-linux-gnu", "lib/aarch64-linux-gnu"))
    cmd = qemu(cpu, py, {"LD_LIBRARY_PATH": libs}) + ["bindings/tests/python/test_bindings.py", bindings_dir, model]
    t = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    lines = out.stdout.strip().splitlines()
    summary = lines[-1] if lines else ""
    return {"ok": out.returncode == 0, "exit_code": out.returncode, "summary": summary,
            "failures": [l for l in lines if l.startswith("FAIL")], "seconds": round(time.monotonic() - t),
            "stderr_tail": out.stderr.strip()[-1500:] if out.returncode else ""}


def main():
    args = sys.argv[1:]
    portable = None
    if "--calibrate" in args:
        i = args.index("--calibrate")
        portable = args[i + 1]
        del args[i:i + 2]
    host_bin, model, train, out_dir, *flavours = args
    with open(train) as f:
        questions = [json.loads(l)["question"] for l in f.readlines()[:5]]
    host = [host_bin]
    report = {"date": datetime.date.today().isoformat(), "host": platform.machine(),
              "qemu": subprocess.run(["qemu-aarch64", "--version"], capture_output=True, text=True).stdout.splitlines()[0],
              "model": os.path.basename(model), "threads": int(THREADS), "flavours": {}}
    for spec in flavours:
        name, binary, cpu, *rest = spec.split("=")
        prefix = qemu(cpu, binary)
        print(f"==> {name} ({cpu})", flush=True)
        r = {"cpu": cpu, "date": report["date"], "binary_bytes": os.path.getsize(binary)}
        r["info"] = check_info(host, prefix, model)
        print(f"    info: {r['info']['ok']} ({r['info']['seconds']} s)", flush=True)
        r["tokens"] = check_tokens(host, prefix, model, questions)
        r["floor"] = check_floor(host, prefix, model)
        print(f"    floor: {r['floor']}", flush=True)
        r["cap"] = check_cap(prefix, model, questions[0])
        print(f"    cap: {r['cap']}", flush=True)
        r["cancel"] = check_cancel(prefix, model, questions[0])
        print(f"    cancel: {r['cancel']}", flush=True)
        if rest:
            python_dir, bindings_dir = rest[0].split(",")
            r["python"] = check_python(cpu, python_dir, bindings_dir, model)
            print(f"    python: {r['python']['summary']} ({r['python']['seconds']} s)", flush=True)
        report["flavours"][name] = r
    os.makedirs(out_dir, exist_ok=True)
    # A run of some flavours keeps the others' latest figures (each dated),
    # and a run without a calibration the last one measured.
    path = os.path.join(out_dir, "report.json")
    old = {}
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        for name, r in old.get("flavours", {}).items():
            if name not in report["flavours"]:
                r.setdefault("date", old.get("date"))
                report["flavours"][name] = r
    if portable:
        print(f"==> calibration: {portable} against the host", flush=True)
        report["calibration"] = calibrate(host, portable, model, questions)
        report["calibration"]["date"] = report["date"]
    elif "calibration" in old:
        report["calibration"] = old["calibration"]
    scale = report["calibration"]["scale"] if "calibration" in report else LOGPROB_TOLERANCE
    report["rounding_scale"] = scale
    failed = [f"{name}: {k}" for name, r in report["flavours"].items() for k in judge(r, scale)]
    report["failed"] = failed
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(markdown(report))
    print(f"==> {'all checks passed' if not failed else 'FAILED: ' + ', '.join(failed)}; {out_dir}/report.md")
    sys.exit(1 if failed else 0)


def logprobs_cell(row):
    lp = row.get("logprobs")
    if lp is None:
        return "—"
    return f"{lp['shared_tokens']}, {lp['max_abs_delta']} nats ({'ok' if lp['ok'] else 'FAILED'})"


def markdown(rep):
    lines = [f"# ARM64 under qemu (latest run {rep['date']})", "",
             f"`bash scripts/arm64.sh` on an {rep['host']} host, {rep['qemu']}, model `{rep['model']}`, "
             f"{rep['threads']} threads. Token ids compared with the host's own build of the same commit.", ""]
    for name, r in rep["flavours"].items():
        lines += [f"## {name}: emulated {r['cpu']} ({r.get('date', rep['date'])})", "",
                  f"- `reckon` binary: {r['binary_bytes']:,} bytes (unstripped)",
                  f"- info: {'agrees with the host' if r['info']['ok'] else 'differs: ' + ', '.join(r['info']['differing_fields'])}"
                  f" ({r['info']['seconds']} s to load and describe)", "",
                  "| question | prompt equal | tokens equal | first difference | tokens (host, arm) | extracted (host, arm) | cap exact | sampled: shared tokens, max \\|Δ ln p\\| | decode tok/s (emulated) |",
                  "|---:|---|---|---:|---|---|---|---|---:|"]
        for i, q in enumerate(r["tokens"]["questions"]):
            lines.append(f"| {i} | {q['prompt_equal']} | {q['tokens_equal']} | {q['first_difference'] if q['first_difference'] is not None else '—'} | "
                         f"{q['tokens'][0]}, {q['tokens'][1]} | {q['extracted'][0]}, {q['extracted'][1]} | {q['cap_exact']} | {logprobs_cell(q)} | {q['decode_tok_s']} |")
        fl, cap, c = r["floor"], r["cap"], r["cancel"]
        if "answers_agree" in r["tokens"]:
            lines += ["", f"Extracted answers agree on {r['tokens']['answers_agree']} of {len(r['tokens']['questions'])} questions."]
        lines += ["",
                  f"- floor 16 / cap 32: {fl['extensions']} extension(s), {fl['injected_tokens']} injected tokens, tokens equal the host's: {fl['tokens_equal']}"
                  + (f" (first difference {fl['first_difference']}; sampled: {logprobs_cell(fl)})" if not fl["tokens_equal"] else "")
                  + f" ({'ok' if fl['ok'] else 'FAILED'})",
                  f"- cap 20: {cap['thinking_tokens']} thinking tokens, forced end {cap['forced_end']}, answer starts `{cap['answer_starts']!r}` ({'ok' if cap['ok'] else 'FAILED'})",
                  f"- Ctrl-C during thinking: exit {c['exit_code']}, finish `{c['finish']}`, {c['events_after_signal']} event(s) after the signal, {c['ms_to_exit']} ms to exit ({'ok' if c['ok'] else 'FAILED'})"]
        if "python" in r:
            p = r["python"]
            lines.append(f"- Python bindings test under ARM64 CPython 3.11: `{p['summary']}` in {p['seconds']} s ({'ok' if p['ok'] else 'FAILED'})")
        lines.append("")
    cal = rep.get("calibration")
    if cal:
        lines += [f"## The rounding scale: a portable x86-64 build against the host ({cal.get('date', rep['date'])})", "",
                  f"`{cal['binary']}` (same commit, `target-cpu=x86-64-v3`: AVX2, no AVX-512 or AMX) measured natively "
                  "the same way. Where its greedy path parts from the host's, the two x86 kernels round differently; "
                  f"the largest sampled |Δ ln p| here, **{cal['scale']} nats**, is the scale an ARM build's may reach.", "",
                  "| question | tokens equal | first difference | extracted (host, x86-64-v3) | sampled: shared tokens, max \\|Δ ln p\\|, mean |",
                  "|---:|---|---:|---|---|"]
        for i, q in enumerate(cal["rows"]):
            lp = q["logprobs"]
            label = i if i < len(cal["rows"]) - 1 else "floor"
            lines.append(f"| {label} | {q['tokens_equal']} | {q['first_difference'] if q['first_difference'] is not None else '—'} | "
                         f"{q['extracted'][0]}, {q['extracted'][1]} | {lp['shared_tokens']}, {lp['max_abs_delta']}, {lp['mean_abs_delta']} |")
        lines.append("")
    lines.append(f"Rounding scale used: {rep.get('rounding_scale', LOGPROB_TOLERANCE)} nats"
                 + ("" if cal else " (no calibration measured: the fixed guess)") + ".")
    lines.append("")
    lines.append("Failed: " + (", ".join(rep["failed"]) if rep["failed"] else "none"))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
