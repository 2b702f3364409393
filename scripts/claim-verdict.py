#!/usr/bin/env python3
"""The claim's criteria (issue 16), judged on `reckon eval`'s records.

    python3 scripts/claim-verdict.py results/claim-gsm8k-0.5b/eval

Reads SUMMARY (the eval's summary.json, Wilson 95% CIs included) and the
per-problem records beside it, and writes claim.md and claim.json into the
eval folder:

  1. SFT+RL's mean thinking tokens <= 60% of SFT's at caps 512 and 1024;
  2. SFT+RL's accuracy >= SFT's at every configuration (each cap, and cap
     512 with one forced "Wait");
  3. SFT+RL's accuracy at cap 256 >= the base model's.

Accuracy comparisons are on the same problems, so besides both CIs each
shows the discordant pairs (right for one model only) and the exact
two-sided McNemar p-value: how surprising the gap is if the two models were
equally accurate.
"""
import json
import math
import sys
from pathlib import Path

BASE = "qwen2.5-coder-0.5b-instruct-q4_k_m"
SFT, RL = f"{BASE}+sft", f"{BASE}+rl"
MAX_LENGTH_RATIO = 0.6


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar test: b and c are the discordant counts."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def records(folder: Path, model: str, config: str) -> dict:
    path = folder / "records" / model / f"{config}.jsonl"
    return {r["id"]: r["correct"] for r in map(json.loads, path.read_text().splitlines()) if r}


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def main() -> None:
    folder = Path(sys.argv[1])
    rows = {(r["model"], r["config"]): r for r in json.loads((folder / "summary.json").read_text())["rows"]}
    configs = sorted({c for (m, c) in rows if m == RL}, key=lambda c: (int(c[3:].split("+")[0]), c))
    checks, lines = [], []

    def accuracy_check(name: str, model: str, ref: str, config: str, ref_config: str) -> None:
        a, r = rows[(model, config)], rows[(ref, ref_config)]
        mine, theirs = records(folder, model, config), records(folder, ref, ref_config)
        common = sorted(set(mine) & set(theirs))
        b = sum(mine[i] and not theirs[i] for i in common)
        c = sum(theirs[i] and not mine[i] for i in common)
        checks.append({
            "check": name, "config": config, "passed": a["accuracy"] >= r["accuracy"],
            "value": a["accuracy"], "ci95": [a["ci95_low"], a["ci95_high"]],
            "reference": r["accuracy"], "reference_ci95": [r["ci95_low"], r["ci95_high"]],
            "only_this_right": b, "only_reference_right": c, "mcnemar_p": mcnemar_p(b, c), "n": len(common),
        })

    for config in configs:
        if config in ("cap512", "cap1024"):
            a, r = rows[(RL, config)], rows[(SFT, config)]
            ratio = a["mean_thinking_tokens"] / r["mean_thinking_tokens"]
            checks.append({
                "check": "thinking <= 60% of SFT's", "config": config, "passed": ratio <= MAX_LENGTH_RATIO,
                "value": a["mean_thinking_tokens"], "reference": r["mean_thinking_tokens"], "ratio": ratio,
            })
        accuracy_check("accuracy >= SFT's", RL, SFT, config, config)
    accuracy_check("accuracy >= base's at cap 256", RL, BASE, "cap256", "cap256")

    lines.append("| criterion | config | SFT+RL | reference | passed | paired: only SFT+RL right / only reference right (McNemar p) |")
    lines.append("|---|---|---|---|:-:|---|")
    for ch in checks:
        ok = "yes" if ch["passed"] else "**no**"
        if "ratio" in ch:
            lines.append(f"| {ch['check']} | {ch['config']} | {ch['value']:.1f} tokens | {ch['reference']:.1f} (ratio {ch['ratio']:.2f}) | {ok} | |")
        else:
            lo, hi = ch["ci95"]
            rlo, rhi = ch["reference_ci95"]
            lines.append(
                f"| {ch['check']} | {ch['config']} | {pct(ch['value'])} ({pct(lo)}–{pct(hi)}) | {pct(ch['reference'])} ({pct(rlo)}–{pct(rhi)}) | {ok} "
                f"| {ch['only_this_right']} / {ch['only_reference_right']} (p = {ch['mcnemar_p']:.2f}) |"
            )
    verdict = all(ch["passed"] for ch in checks)
    lines.append("")
    lines.append(f"Claim {'met' if verdict else 'not met'}: {sum(ch['passed'] for ch in checks)} of {len(checks)} criteria passed.")
    (folder / "claim.md").write_text("\n".join(lines) + "\n")
    (folder / "claim.json").write_text(json.dumps({"met": verdict, "checks": checks}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
