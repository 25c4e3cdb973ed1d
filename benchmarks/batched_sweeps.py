"""CPU seconds of tracing with the rows of K prompts in shared backward sweeps vs one prompt at a
time, in one process (circuits.trace.trace_prompts), interleaved and repeated: the minimum over
repeats is the figure (CPU seconds are robust to other jobs on a shared machine; wall is printed).

    python benchmarks/batched_sweeps.py --model world --transcoders DIR --n 40 --repeat 4 \
        --batch-size 4,64 --batch-prompts 1,8
    python benchmarks/batched_sweeps.py --model smollm2-135m --transcoders PLT --n 8 --repeat 2

Prompts: world-addition for `world` (all 7 tokens), else "The capital of STATE is" (5-7 tokens on
SmolLM2: padding in every shared sweep).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's circuits


def prompts_for(model: str, n: int) -> list[str]:
    from trace_batch import benchmark_records  # the same prompts as benchmarks/trace_batch.py

    return [r["prompt"] for r in benchmark_records(model, n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="world")
    ap.add_argument("--transcoders", required=True)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch-size", default="64", help="comma-separated TraceConfig.batch_size values")
    ap.add_argument("--batch-prompts", default="1,8", help="comma-separated K values")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from circuits.attribution.config import TraceConfig
    from circuits.replacement.model import ReplacementModel
    from circuits.trace import trace_prompts

    torch.set_num_threads(args.threads)
    rm = ReplacementModel.load(args.model, args.transcoders, progress=False)
    prompts = prompts_for(args.model, args.n)
    sizes = [int(x) for x in args.batch_size.split(",")]
    ks = [int(x) for x in args.batch_prompts.split(",")]
    print(f"load {os.getloadavg()[0]:.2f} at {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; "
          f"{args.model}, {args.n} prompts, {args.threads} thread(s)", flush=True)
    best: dict = {}
    for rep in range(args.repeat):
        for bs in sizes:
            config = TraceConfig(batch_size=bs)
            for k in ks:
                cpu, t0 = time.process_time(), time.perf_counter()
                list(trace_prompts(rm, [(p, config) for p in prompts], k))
                cpu, wall = time.process_time() - cpu, time.perf_counter() - t0
                best[bs, k] = min(best.get((bs, k), (float("inf"), 0.0)), (cpu, wall))
                print(f"  run {rep}: batch size {bs}, batch prompts {k}: {cpu:.2f} CPU s, {wall:.2f} s wall", flush=True)
    print(f"{'batch size':>10} {'K':>4} {'min CPU s':>10} {'prompts per CPU-min':>20}")
    for (bs, k), (cpu, _) in sorted(best.items()):
        print(f"{bs:>10} {k:>4} {cpu:>10.2f} {60 * args.n / cpu:>20.0f}")
    print(f"load after {os.getloadavg()[0]:.2f} at {time.strftime('%H:%M:%S UTC', time.gmtime())}")


if __name__ == "__main__":
    main()
