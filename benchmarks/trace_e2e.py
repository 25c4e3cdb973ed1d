"""End-to-end time of a warm `circuits trace` command, and where that time goes.

    python benchmarks/trace_e2e.py --model smollm2-135m --transcoders DIR [--repeat 5] [--warmup 1] \
        [--prompt "The capital of France is"]

"Warm": the model is in the cache, the transcoders and their feature index exist, and one
uncounted run has put the files in the page cache. Each counted run is a fresh
`python -m circuits trace PROMPT --model M --transcoders DIR --json` process; the script reports the
median (min-max) of its wall time, CPU time (user + sys, from the kernel's accounting of the child)
and peak RSS, and of the phases the command reports itself (forward, attribution, prune, total).
Then one more process (`--phases`) runs the same steps in-process with a clock around each one:
imports, model + transcoder load, feature-index read, trace (its own phases), JSON out. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_once(cmd: list[str], env: dict) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} exited with {os.waitstatus_to_exitcode(status)}")
    return dict(wall=wall, cpu=usage.ru_utime + usage.ru_stime, peak_gib=usage.ru_maxrss / 2**20,
                timing=json.loads(out).get("timing_seconds", {}))


class Clock:
    """Wall and CPU seconds (this process, all threads) since the last lap and since the start."""

    def __init__(self):
        self.start = self.last = (time.perf_counter(), time.process_time())

    def lap(self) -> list[float]:
        now = (time.perf_counter(), time.process_time())
        out, self.last = [now[0] - self.last[0], now[1] - self.last[1]], now
        return out

    def total(self) -> list[float]:
        return [time.perf_counter() - self.start[0], time.process_time() - self.start[1]]


def phases(args) -> None:
    """In-process clock around each step of the trace command (printed as one JSON line)."""
    t, clock = {}, Clock()
    import torch  # noqa: F401

    from circuits.replacement.model import ReplacementModel
    from circuits.trace import trace_prompt
    from circuits.attribution.config import TraceConfig

    t["imports"] = clock.lap()
    rm = ReplacementModel.load(args.model, args.transcoders, "cpu", progress=False)
    t["load model + transcoders"] = clock.lap()
    _ = rm.index
    t["read feature index"] = clock.lap()
    result = trace_prompt(rm, args.prompt, TraceConfig(), progress=False)
    t["trace"] = clock.lap()
    for k, v in result.graph.timing_seconds.items():
        t[f"  trace: {k}"] = [v, None]
    json.dumps(result.summary)
    t["summary JSON"] = clock.lap()
    t["process so far"] = clock.total()
    print(json.dumps({"steps": t, "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))


def spread(values) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def summarise(runs: list[dict], repeat: int) -> None:
    print(f"\nwarm `circuits trace` end to end, {repeat} runs, median (min-max):")
    print(f"  wall {spread([r['wall'] for r in runs])} s, CPU {spread([r['cpu'] for r in runs])} s, "
          f"peak RSS {spread([r['peak_gib'] for r in runs])} GiB")
    for key in runs[0]["timing"]:
        print(f"  {key}: {spread([r['timing'].get(key, float('nan')) for r in runs])} s")
    print(f"  outside the trace (start-up, loading, output): "
          f"{spread([r['wall'] - r['timing'].get('total', 0.0) for r in runs])} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--transcoders", required=True)
    ap.add_argument("--prompt", default="The capital of France is")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--phases", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-phases", action="store_true", help="skip the in-process breakdown")
    args = ap.parse_args()
    if args.phases:
        phases(args)
        return
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    cmd = [sys.executable, "-m", "circuits", "trace", args.prompt, "--model", args.model,
           "--transcoders", args.transcoders, "--json"]
    for _ in range(args.warmup):
        run_once(cmd, env)
    runs = []
    for i in range(args.repeat):
        runs.append(run_once(cmd, env))
        r = runs[-1]
        print(f"run {i + 1}: wall {r['wall']:.1f} s, CPU {r['cpu']:.1f} s, peak {r['peak_gib']:.2f} GiB, "
              + ", ".join(f"{k} {v:.1f} s" for k, v in r["timing"].items())
              + f", load {os.getloadavg()[0]:.1f}", flush=True)

    if runs:
        summarise(runs, args.repeat)
    if not args.no_phases:
        out = subprocess.run([sys.executable, __file__, "--phases", "--model", args.model, "--transcoders",
                              args.transcoders, "--prompt", args.prompt], env=env, check=True,
                             capture_output=True, text=True).stdout
        got = json.loads(out.strip().splitlines()[-1])
        print(f"\none process, clock around each step (peak RSS {got['peak_gib']:.2f} GiB):")
        print(f"  {'step':<28} {'wall s':>8} {'CPU s':>8}")
        for k, (wall, cpu) in got["steps"].items():
            print(f"  {k:<28} {wall:8.2f} {'' if cpu is None else f'{cpu:8.2f}'}")


if __name__ == "__main__":
    main()
