"""Attribution on a quiet vs a busy machine: how much one competing CPU-bound process slows a trace.

    python benchmarks/busy_machine.py --model smollm2-135m --transcoders DIR \
        [--prompt "The capital of France is"] [--repeat 3] [--modes adaptive,fixed]

For each repeat and mode, alternating: the attribution of the prompt (forward + all rows) alone,
then again while a `python -c 'while 1: pass'` process runs beside it. Modes:
- adaptive: the engine's default (threads for the cores free now, re-checked per batch);
- fixed: torch's default thread count held for the whole call (the behaviour before).
Prints medians and the busy/quiet ratio per mode. The "quiet" runs are only as quiet as the
machine is: report the load average it prints beside the figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch


def _attribute_seconds(model, transcoder, tokens, threads: int | None) -> tuple[float, list[int]]:
    from circuits.attribution.config import TraceConfig
    from circuits.attribution.engine import attribution_rows

    t0 = time.perf_counter()
    attr = attribution_rows(model, transcoder, tokens, TraceConfig(memory_gb=None), threads=threads)
    return time.perf_counter() - t0, attr.threads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--transcoders", required=True)
    ap.add_argument("--prompt", default="The capital of France is")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--modes", default="adaptive,fixed")
    args = ap.parse_args()

    from circuits.replacement.prompts import tokenize_prompt
    from circuits.replacement.model import ReplacementModel

    rm = ReplacementModel.load(args.model, args.transcoders, "cpu", False)
    model, tc = rm.model, rm.transcoder
    tokens = tokenize_prompt(model, args.prompt)
    default_threads = torch.get_num_threads()
    modes = args.modes.split(",")
    times: dict[tuple[str, str], list[float]] = {}
    print(f"prompt {args.prompt!r} ({len(tokens)} tokens), torch default threads {default_threads}, "
          f"load average before {os.getloadavg()}", flush=True)
    _attribute_seconds(model, tc, tokens, None)  # warm-up
    for rep in range(args.repeat):
        for mode in modes:
            threads = None if mode == "adaptive" else default_threads
            for condition in ("quiet", "busy"):
                hog = None
                if condition == "busy":
                    hog = subprocess.Popen([sys.executable, "-c", "while 1: pass"])
                    time.sleep(0.5)
                try:
                    seconds, used = _attribute_seconds(model, tc, tokens, threads)
                finally:
                    if hog is not None:
                        hog.kill()
                        hog.wait()
                times.setdefault((mode, condition), []).append(seconds)
                print(f"  repeat {rep} {mode:8s} {condition:5s} {seconds:8.2f} s  threads {used}", flush=True)
    print(f"load average after {os.getloadavg()}")
    print("\n| mode | quiet median s | busy median s | busy / quiet |")
    print("| --- | --- | --- | --- |")
    for mode in modes:
        quiet = statistics.median(times[(mode, "quiet")])
        busy = statistics.median(times[(mode, "busy")])
        print(f"| {mode} | {quiet:.2f} | {busy:.2f} | {busy / quiet:.2f}x |")


if __name__ == "__main__":
    main()
