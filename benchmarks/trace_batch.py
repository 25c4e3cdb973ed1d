"""Prompts per minute of `circuits trace-batch`: one process vs N torchrun ranks (gloo on CPU) vs
one process with the rows of several prompts in shared backward sweeps (--batch-prompts K), with
the CPU seconds of all processes alongside.

    python benchmarks/trace_batch.py --model world --n 100 [--ranks 2] [--batch-prompts 8] [--threads 1]
    python benchmarks/trace_batch.py --model smollm2-135m --n 20 --transcoders DIR

Each configuration traces the same prompts (world-addition for `world`, else the smollm2-capitals
and induction prompt shapes) into a fresh folder. `trace` is the tracing loop's wall time on rank 0
(trace-batch's trace_seconds: model loading excluded), `loop cpu` the CPU seconds of that loop on
rank 0 (trace_cpu_seconds: robust to other jobs on the machine; one rank's share under torchrun),
`wall` the whole command (imports, loading, the torchrun agent), `cpu` the user+system seconds of
every process of the command.
`--repeat R` runs the configurations R times, interleaved (the machine's load drifts); every run is
printed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's circuits, also when another is installed


def benchmark_records(model: str, n: int) -> list[dict]:
    """The benchmark's n prompts ({prompt, id}): world's addition set, else capital prompts."""
    from circuits.batch.datasets import world_addition

    if model.startswith("world"):
        return world_addition(n, seed=0)
    from circuits.models.world.facts import STATE_CAPITAL

    states = sorted(STATE_CAPITAL)
    return [{"prompt": f"The capital of {states[i % len(states)]} is", "id": f"c{i:04d}"} for i in range(n)]


def prompts_file(folder: Path, model: str, n: int) -> Path:
    path = folder / "prompts.jsonl"
    records = benchmark_records(model, n)
    path.write_text("".join(json.dumps({"prompt": r["prompt"], "id": r["id"]}) + "\n" for r in records))
    return path


def run(cmd: list[str], threads: int) -> tuple[dict, float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    out = proc.stdout
    summary = json.loads(out[out.index("{"):])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return summary, wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="world")
    ap.add_argument("--transcoders", default=None)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--batch-prompts", type=int, default=8, help="prompts per shared sweep in the batched row")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=None, help="trace-batch's --batch-size (rows per sweep)")
    args = ap.parse_args()
    extra = ["--model", args.model, "--json", "--threads", str(args.threads)]
    if args.batch_size:
        extra += ["--batch-size", str(args.batch_size)]
    if args.transcoders:
        extra += ["--transcoders", args.transcoders]
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1/5/15 min), "
          f"{os.cpu_count()} cores; model {args.model}, {args.n} prompts, {args.threads} thread(s) per process, "
          f"batch size {args.batch_size or 'default'}; {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prompts = prompts_file(tmp, args.model, args.n)
        base = [sys.executable, "-m", "circuits", "trace-batch", str(prompts)]
        configs = [("1 process", base + ["--out", str(tmp / "one")] + extra)]
        configs.append((f"{args.ranks} ranks", [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                                                str(args.ranks), "--master-addr", "127.0.0.1", "--master-port", "29517",
                                                "-m", "circuits", "trace-batch", str(prompts), "--out",
                                                str(tmp / "ranks")] + extra))
        configs.append((f"batched {args.batch_prompts}", base + ["--out", str(tmp / "batched"), "--batch-prompts",
                                                               str(args.batch_prompts)] + extra))
        print(f"{'configuration':<14} {'prompts/min':>12} {'trace s':>9} {'loop cpu s':>11} {'wall s':>8} {'cpu s':>8}")
        for rep in range(args.repeat):
            for name, cmd in configs:
                out = Path(cmd[cmd.index("--out") + 1])
                if out.exists():
                    shutil.rmtree(out)
                summary, wall, cpu = run(cmd, args.threads)
                rate = 60 * summary["traced"] / summary["trace_seconds"]
                print(f"{name:<14} {rate:>12.1f} {summary['trace_seconds']:>9.1f} {summary['trace_cpu_seconds']:>11.1f} "
                      f"{wall:>8.1f} {cpu:>8.1f}", flush=True)
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
