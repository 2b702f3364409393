"""Soak: 8 concurrent solves on one loaded model for a while, with short
budgets and random cancels, in two shapes:

* threads: the Python bindings, one Engine, 8 threads each solving in its
  own context, a random third of the solves cancelled from a timer thread;
* slots: `reckon serve --parallel 8` (the engine's batched decode loop), 8
  streaming clients, a random third of them hanging up mid-stream.

Counts solves, cancels and errors, samples RSS every 5 s, and prints one
JSON object (RSS of the first and the last minute, as medians). Run through
scripts/soak.sh, which builds what it needs.

    python soak.py BINDINGS_DIR MODEL DATA RECKON_BIN MINUTES OUT_JSON
"""

import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time

BINDINGS, MODEL, DATA, RECKON, MINUTES, OUT = sys.argv[1:7]
SECONDS = float(MINUTES) * 60
WORKERS = 8
sys.path.insert(0, BINDINGS)
import reckon_ffi as r  # noqa: E402

QUESTIONS = [json.loads(line)["question"] for line in open(DATA, encoding="utf-8")][:200]


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Sampler:
    """RSS of a process every 5 s, with the time of each sample."""

    def __init__(self, pid):
        self.pid, self.samples, self.stop = pid, [], threading.Event()
        self.t0 = time.monotonic()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            self.samples.append((time.monotonic() - self.t0, rss_mib(self.pid)))
            self.stop.wait(5)

    def figures(self):
        self.stop.set()
        self.thread.join()
        end = self.samples[-1][0]
        first = [m for t, m in self.samples if t <= 60] or [self.samples[0][1]]
        last = [m for t, m in self.samples if t >= end - 60] or [self.samples[-1][1]]
        minutes = [[m for t, m in self.samples if k * 60 <= t < (k + 1) * 60] for k in range(int(end // 60) + 1)]
        return {
            "rss_first_minute_mib": statistics.median(first),
            "rss_last_minute_mib": statistics.median(last),
            "rss_max_mib": max(m for _, m in self.samples),
            "rss_by_minute_mib": [round(statistics.median(v), 1) for v in minutes if v],
            "rss_samples": len(self.samples),
        }


def budgets(rng):
    return dict(max_thinking_tokens=rng.choice([8, 16, 32, 48]), max_answer_tokens=rng.choice([4, 8, 16]))


class Quiet(r.SolveListener):
    def on_event(self, event):
        return True


def soak_threads():
    engine = r.Engine(MODEL, r.EngineOptions())
    sampler = Sampler(os.getpid())
    counts = {"solves": 0, "cancelled": 0, "errors": 0}
    errors = []
    lock = threading.Lock()
    deadline = time.monotonic() + SECONDS

    def worker(i):
        rng = random.Random(i)
        while time.monotonic() < deadline:
            token = r.CancelToken()
            timer = None
            if rng.random() < 1 / 3:
                timer = threading.Timer(rng.uniform(0.0, 0.6), token.cancel)
                timer.start()
            try:
                opts = r.SolveOptions(threads=1, temperature=0.7, seed=rng.randrange(1 << 31), **budgets(rng))
                res = engine.solve(rng.choice(QUESTIONS), opts, Quiet(), token)
                with lock:
                    counts["solves"] += 1
                    counts["cancelled"] += res.finish == r.FinishReason.CANCELLED
            except Exception as e:  # counted and reported
                with lock:
                    counts["errors"] += 1
                    errors.append(repr(e))
            finally:
                if timer:
                    timer.cancel()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {**counts, **sampler.figures(), "first_errors": errors[:3]}


def soak_slots():
    import httpx

    port = random.Random().randrange(20000, 60000)
    server = subprocess.Popen(
        [RECKON, "serve", "--model", MODEL, "--port", str(port), "--parallel", str(WORKERS), "--slot-ctx", "1024", "--threads", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            httpx.get(base + "/health", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.2)
    sampler = Sampler(server.pid)
    counts = {"solves": 0, "hung_up": 0, "errors": 0}
    errors = []
    lock = threading.Lock()
    deadline = time.monotonic() + SECONDS

    def worker(i):
        rng = random.Random(100 + i)
        with httpx.Client(timeout=120) as h:
            while time.monotonic() < deadline:
                b = budgets(rng)
                body = {
                    "messages": [{"role": "user", "content": rng.choice(QUESTIONS)}],
                    "stream": True,
                    "thinking_budget_tokens": b["max_thinking_tokens"],
                    "max_tokens": b["max_answer_tokens"],
                    "temperature": 0.7,
                    "seed": rng.randrange(1 << 31),
                }
                hang_up_after = rng.randrange(1, 12) if rng.random() < 1 / 3 else None
                try:
                    with h.stream("POST", base + "/v1/chat/completions", json=body) as resp:
                        if resp.status_code != 200:
                            raise RuntimeError(f"status {resp.status_code}: {resp.read()[:200]!r}")
                        done = False
                        for n, line in enumerate(resp.iter_lines()):
                            if hang_up_after is not None and n >= hang_up_after:
                                break
                            if line == "data: [DONE]":
                                done = True
                        with lock:
                            if hang_up_after is not None and not done:
                                counts["hung_up"] += 1
                            elif done:
                                counts["solves"] += 1
                            else:
                                raise RuntimeError("the stream ended without [DONE]")
                except Exception as e:  # counted and reported
                    with lock:
                        counts["errors"] += 1
                        errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    health = httpx.get(base + "/health").json()
    figures = {**counts, **sampler.figures(), "first_errors": errors[:3], "slots_busy_after": health["slots_busy"]}
    server.terminate()
    server.wait(30)
    return figures


# SOAK_SHAPES=threads (or slots) runs one shape alone.
SHAPES = os.environ.get("SOAK_SHAPES", "threads,slots").split(",")
report = {"workers": WORKERS, "minutes": float(MINUTES)}
if "threads" in SHAPES:
    report["threads"] = soak_threads()
if "slots" in SHAPES:
    report["slots"] = soak_slots()
with open(OUT, "w") as f:
    json.dump(report, f, indent=1)
print(json.dumps(report, indent=1))
bad = sum(report[k]["errors"] for k in ("threads", "slots") if k in report) + report.get("slots", {}).get("slots_busy_after", 0)
sys.exit(1 if bad else 0)
