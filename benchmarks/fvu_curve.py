"""Held-out-like FVU against CPU minutes from a transcoder training log (`--log FILE` JSONL).

    circuits transcoders train --model smollm2-135m --tokens 900000 --log curve.jsonl --out runs/curve
    python benchmarks/fvu_curve.py curve.jsonl --plot docs/images/fvu_curve.png [--metrics runs/curve/metrics.json]

Every training token of a run without --activation-tokens is fresh (the model runs live), so each
log step's FVU is measured on positions the transcoder has not been trained on yet: a held-out
figure along the way. The LR schedule (decay over the last part) makes a shorter run's final FVU
a little better than this curve at the same point. With --activation-tokens N the first N
tokens are fresh and later passes re-read them (the curve then shows training FVU). Prints one row
per --every CPU minutes; with --metrics, the run's final held-out fidelity (FVU, L0, dead, top-1,
KL) under the table; each --point CPU_MIN:FVU:LABEL (held-out results of other runs) is drawn as a
marker on the plot.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_log(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows or "process_cpu_s" not in rows[0]:
        raise SystemExit(f"{path}: no log lines with process_cpu_s (written by the trainer since issue 23)")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("log", type=Path)
    ap.add_argument("--every", type=float, default=2.0, help="CPU minutes between printed rows")
    ap.add_argument("--window", type=int, default=5, help="log steps averaged per printed row")
    ap.add_argument("--plot", type=Path)
    ap.add_argument("--metrics", type=Path)
    ap.add_argument("--point", action="append", default=[], help="CPU_MIN:FVU:LABEL, a held-out result to mark")
    ap.add_argument("--title", default=None)
    args = ap.parse_args()
    rows = read_log(args.log)
    cpu0 = 0.0
    print(f"{'CPU min':>8} {'tokens':>9} {'FVU':>7} {'L0/layer':>9} {'dead':>6}")
    next_at = 0.0
    for i, r in enumerate(rows):
        minutes = (r["process_cpu_s"] - cpu0) / 60
        if minutes >= next_at or i == len(rows) - 1:
            window = rows[max(0, i - args.window + 1): i + 1]
            fvu = sum(w["fvu_mean"] for w in window) / len(window)
            l0 = r["l0_total"] / len(r["l0_per_layer"])
            print(f"{minutes:8.1f} {r['tokens']:9d} {fvu:7.3f} {l0:9.1f} {r['dead_fraction']:6.3f}")
            next_at = minutes + args.every
    if args.metrics:
        fid = json.loads(args.metrics.read_text()).get("fidelity", {})
        print("final held-out:", {k: round(fid[k], 4) for k in ("fvu_mean", "top1_agreement", "kl_mean",
                                                              "dead_fraction") if k in fid},
              "L0/layer", round(fid.get("l0_total", 0) / max(len(fid.get("l0_per_layer", [1])), 1), 1))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([(r["process_cpu_s"] - cpu0) / 60 for r in rows], [r["fvu_mean"] for r in rows], lw=1)
        ax.axhline(0.25, ls="--", c="grey", lw=0.8)
        for spec in args.point:
            minutes, fvu, label = spec.split(":", 2)
            ax.plot([float(minutes)], [float(fvu)], "o", ms=5)
            ax.annotate(label, (float(minutes), float(fvu)), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel("CPU minutes (training process, model forward included)")
        ax.set_ylabel("FVU (mean of layers)")
        ax.set_title(args.title or args.log.name, fontsize=9)
        fig.tight_layout()
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=120)
        print("plot:", args.plot)


if __name__ == "__main__":
    main()
