"""Extra time and memory of `circuits trace --qk` over a plain trace (issue 20).

    python benchmarks/qk_cost.py --model smollm2-135m --transcoders DIR --lengths 16 64
    python benchmarks/qk_cost.py --model world --lengths 16 64      # world and its default CLT

Each length runs in its own process: load the model and transcoder, trace one prompt of about
`length` tokens once plain and once with --qk to warm up, then `--repeat` times plain and --qk
alternately (a busy machine's load drifts: alternating pairs see the same load); the table gives
the median wall time of each mode, the peak RSS during each mode's traces (sampled every 5 ms by a
thread reading /proc/self/statm), and the ratios (target: under 1.5x). The attention part's own
time is the graph's timing_seconds["attention"]. Prompts: a fixed sentence (a calc line where the model knows no words) repeated to the length (the model's own tokenizer).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

BASES = ("Fact: the capital of the state containing Dallas is Austin ", "calc: 12+34=46 ")  # world-tiny: calc only


def prompt_of(rm, n_tokens: int) -> str:
    from circuits.errors import CircuitsError

    for base in BASES:
        try:
            rm.tokens(base)
            break
        except CircuitsError:
            continue
    def count(text: str) -> int:  # no context check: the text may run past it before trimming
        return int(rm.model.to_tokens(text, prepend_bos=True, truncate=False).shape[1])

    text = base
    while count(text) < n_tokens:
        text += base
    words = text.split(" ")
    while count(" ".join(words)) > n_tokens and len(words) > 1:
        words.pop()
    return " ".join(words)


class PeakRSS:
    """The process's peak resident memory while a block runs (a thread polls /proc/self/statm)."""

    def __init__(self, interval: float = 0.005):
        import os
        import threading

        self.page = os.sysconf("SC_PAGE_SIZE")
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(self.interval)

    def __enter__(self):
        self.peak = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def one(args) -> list[dict]:
    from circuits.replacement.model import ReplacementModel
    from circuits.attribution.config import TraceConfig
    from circuits.trace import trace_prompt

    rm = ReplacementModel.load(args.model, args.transcoders, "cpu", progress=False)
    prompt = prompt_of(rm, args.length)
    configs = {"plain": TraceConfig(), "qk": TraceConfig(qk=True, qk_heads=args.qk_heads)}
    for config in configs.values():
        trace_prompt(rm, prompt, config)  # warm-up
    times = {m: [] for m in configs}
    attention, peaks, result = [], {m: 0 for m in configs}, None
    for _ in range(args.repeat):
        for mode, config in configs.items():
            with PeakRSS() as rss:
                t0 = time.perf_counter()
                result = trace_prompt(rm, prompt, config)
                times[mode].append(time.perf_counter() - t0)
            peaks[mode] = max(peaks[mode], rss.peak)
            if mode == "qk":
                attention.append(result.graph.timing_seconds.get("attention", 0.0))
    common = {"length": len(rm.tokens(prompt)), "kept_edges": int(result.pruned.edges()[0].shape[0]),
              "heads": len(result.graph.attention.heads)}
    return [{**common, "mode": m, "seconds": statistics.median(times[m]), "all_seconds": times[m],
             "attention_seconds": statistics.median(attention) if m == "qk" else 0.0,
             "peak_rss_gb": peaks[m] / 2**30} for m in configs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--transcoders", default=None)
    ap.add_argument("--lengths", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--qk-heads", type=int, default=8)
    ap.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.length:
        print(json.dumps(one(args)))
        return
    rows = []
    for length in args.lengths:
        cmd = [sys.executable, __file__, "--model", args.model, "--length", str(length),
               "--repeat", str(args.repeat), "--qk-heads", str(args.qk_heads)]
        if args.transcoders:
            cmd += ["--transcoders", args.transcoders]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows += json.loads(out.strip().splitlines()[-1])
        print(json.dumps(rows[-2:]), flush=True)
    print(f"{'tokens':>6} {'plain s':>8} {'--qk s':>8} {'ratio':>6} {'attn s':>7} {'plain GB':>9} {'--qk GB':>8} "
          f"{'ratio':>6} {'edges':>6} {'heads':>5}")
    for plain, qk in zip(rows[::2], rows[1::2]):
        print(f"{plain['length']:>6} {plain['seconds']:>8.2f} {qk['seconds']:>8.2f} {qk['seconds'] / plain['seconds']:>6.2f} "
              f"{qk['attention_seconds']:>7.2f} {plain['peak_rss_gb']:>9.2f} {qk['peak_rss_gb']:>8.2f} "
              f"{qk['peak_rss_gb'] / plain['peak_rss_gb']:>6.2f} {qk['kept_edges']:>6} {qk['heads']:>5}")


if __name__ == "__main__":
    main()
