"""Long prompts (issue 19): one trace per length, each in its own process, default settings.

    python benchmarks/long_context.py --model smollm2-135m [--transcoders benchmarks/work/random-plt] \
        [--lengths 64,256,1000,2000] [--memory-gb 4] [--max-feature-nodes N] [--threads 1]

--transcoders defaults to the model's default PLT in $CIRCUITS_HOME (transcoders/<model>/default-plt)
when it is there. Prints one row per length: tokens, active features, features chosen, how the
rows were held (exact: every row kept; store: the exact store filled the budget; streamed:
sketches, chosen rows recomputed) and how many layers' attention patterns were rebuilt from q
and k (the others kept), CPU seconds (user + system) and wall seconds of the trace, peak RSS of the whole process
(ru_maxrss) beside the memory model's prediction (the larger of the forward check's and the row
plan's) and the budget, and the replacement and completeness scores. A length that is refused
prints the refusal. The prompt is prose from Python's own documentation (docstrings of standard
library modules, offline), cut to the length in tokens (BOS included).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's circuits, also when another is installed

MODULES = ["collections", "functools", "itertools", "pathlib", "argparse", "json", "logging", "re",
           "subprocess", "threading", "unittest", "typing", "dataclasses", "contextlib", "inspect"]


def document() -> str:
    """Prose from the standard library's docstrings (module, then its public names)."""
    import importlib
    import inspect

    parts = []
    for name in MODULES:
        mod = importlib.import_module(name)
        parts.append(inspect.getdoc(mod) or "")
        for attr in sorted(vars(mod)):
            obj = getattr(mod, attr)
            if not attr.startswith("_") and getattr(obj, "__module__", None) == name:
                parts.append(inspect.getdoc(obj) or "")
    return "\n\n".join(p for p in parts if p)


def prompt_of_length(model, n_tokens: int) -> str:
    ids = model.to_tokens(document(), prepend_bos=False)[0][: n_tokens - 1]
    return model.tokenizer.decode(ids.tolist())


def child(args) -> None:
    import torch

    from circuits.errors import CircuitsError
    from circuits.replacement.model import ReplacementModel
    from circuits.trace import trace_prompt
    from circuits.attribution.config import TraceConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    rm = ReplacementModel.load(args.model, args.transcoders, "cpu", progress=False)
    prompt = prompt_of_length(rm.model, args.length)
    settings = {"memory_gb": args.memory_gb}
    if args.max_feature_nodes:
        settings["max_feature_nodes"] = args.max_feature_nodes
    t0, c0 = time.perf_counter(), _cpu()
    try:
        result = trace_prompt(rm, prompt, TraceConfig(**settings))
    except CircuitsError as exc:
        print(json.dumps({"refused": str(exc)}))
        return
    graph = result.graph
    plan = graph.settings.get("memory_plan", {})
    mode = "streamed" if plan.get("streamed") else "store" if plan.get("store_limit") is not None else "exact"
    print(json.dumps({
        "tokens": len(graph.token_ids), "active": plan.get("n_active"), "chosen": plan.get("n_chosen"),
        "mode": mode, "patterns": f"{plan.get('patterns_rebuilt_layers', 0)} rebuilt",
        "cpu_s": _cpu() - c0, "wall_s": time.perf_counter() - t0, "peak_rss_gb": _peak_gb(),
        "predicted_gb": max(plan.get("predicted_bytes") or 0, plan.get("forward_predicted_bytes") or 0) / 2 ** 30,
        "decoders_cached": plan.get("cache_decoders"),
        "final_gb": max(plan.get("predicted_final_bytes") or 0, plan.get("forward_predicted_bytes") or 0) / 2 ** 30,
        "replacement": result.summary["scores"]["replacement"],
        "completeness": result.summary["scores"]["completeness"], "timing": graph.timing_seconds}))


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2 ** 30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--transcoders", type=Path, default=None)
    ap.add_argument("--lengths", default="64,256,1000,2000")
    ap.add_argument("--memory-gb", type=float, default=4.0)
    ap.add_argument("--max-feature-nodes", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--length", type=int, help=argparse.SUPPRESS)  # the child's one length
    args = ap.parse_args()
    if args.transcoders is None:
        from circuits.paths import circuits_home

        args.transcoders = circuits_home() / "transcoders" / args.model / "default-plt"
        if not (args.transcoders / "config.yaml").exists():
            ap.error(f"no default PLT at {args.transcoders}: pass --transcoders (benchmarks/random_plt.py makes one)")
    if args.length:
        return child(args)
    print(f"{args.model}, transcoders {args.transcoders}, budget {args.memory_gb:g} GB, "
          f"cap {args.max_feature_nodes or 'default'}, {args.threads} thread(s); load {os.getloadavg()[0]:.1f}")
    print("| tokens | active | chosen | rows | patterns | CPU s | wall s | peak RSS GB | predicted GB (plan / at the "
          "rows kept) | replacement | completeness | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in [int(x) for x in args.lengths.split(",")]:
        cmd = [sys.executable, __file__, "--model", args.model, "--transcoders", str(args.transcoders),
               "--memory-gb", str(args.memory_gb), "--threads", str(args.threads), "--length", str(n)]
        if args.max_feature_nodes:
            cmd += ["--max-feature-nodes", str(args.max_feature_nodes)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode or not lines:
            print(f"| {n} | failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]} |")
            continue
        r = json.loads(lines[-1])
        if "refused" in r:
            print(f"| {n} | refused: {r['refused']} |")
            continue
        print(f"| {r['tokens']} | {r['active']:,} | {r['chosen']:,} | {r['mode']} | {r['patterns']} | {r['cpu_s']:.1f} | "
              f"{r['wall_s']:.1f} | {r['peak_rss_gb']:.2f} | {r['predicted_gb']:.2f} / {r['final_gb']:.2f} | "
              f"{r['replacement']:.3f} | "
              f"{r['completeness']:.3f} | {os.getloadavg()[0]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
