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

A run with --eval-every-tokens N also logs `heldout` lines: the transcoder as it was at that step,
scored on 4,096 held-out positions (never trained on). Those are the honest curve; they are printed
in their own table and drawn as a second line. Their CPU (eval_cpu_s) is left out of the x axis.
--offset-minutes M adds M CPU minutes to every point (the model forward of a cache built by a
separate `circuits transcoders cache-activations` process).
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
    ap.add_argument("--offset-minutes", type=float, default=0.0,
                    help="CPU minutes spent before this process (a cache built separately)")
    args = ap.parse_args()
    lines = read_log(args.log)
    rows = [r for r in lines if "heldout" not in r]
    points = [r for r in lines if "heldout" in r]
    cpu0 = -args.offset_minutes * 60

    def minutes_of(r: dict) -> float:
        return (r["process_cpu_s"] - r.get("eval_cpu_s", 0.0) - cpu0) / 60
    print(f"{'CPU min':>8} {'tokens':>9} {'FVU':>7} {'L0/layer':>9} {'dead':>6}")
    next_at = 0.0
    for i, r in enumerate(rows):
        minutes = minutes_of(r)
        if minutes >= next_at or i == len(rows) - 1:
            window = rows[max(0, i - args.window + 1): i + 1]
            fvu = sum(w["fvu_mean"] for w in window) / len(window)
            l0 = r["l0_total"] / len(r["l0_per_layer"])
            print(f"{minutes:8.1f} {r['tokens']:9d} {fvu:7.3f} {l0:9.1f} {r['dead_fraction']:6.3f}")
            next_at = minutes + args.every
    if points:
        print(f"held-out ({points[0]['heldout'].get('n_tokens', '?')} positions):")
        print(f"{'CPU min':>8} {'tokens':>9} {'FVU':>7} {'L0/layer':>9} {'dead':>6}")
        for p in points:
            h = p["heldout"]
            print(f"{minutes_of(p):8.1f} {p['tokens']:9d} {h['fvu_mean']:7.3f} "
                  f"{h['l0_total'] / len(h['l0_per_layer']):9.1f} {h['dead_fraction']:6.3f}")
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
        ax.plot([minutes_of(r) for r in rows], [r["fvu_mean"] for r in rows], lw=0.8, alpha=0.6,
                label="training batches")
        if points:
            ax.plot([minutes_of(p) for p in points], [p["heldout"]["fvu_mean"] for p in points], "o-", ms=3,
                    lw=1.4, c="k", label="held-out positions")
            ax.legend(fontsize=7)
        ax.axhline(0.25, ls="--", c="grey", lw=0.8)
        for spec in args.point:
            minutes, fvu, label = spec.split(":", 2)
            ax.plot([float(minutes)], [float(fvu)], "o", ms=5)
            ax.annotate(label, (float(minutes), float(fvu)), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel("CPU minutes (model forward included, held-out scoring left out)")
        ax.set_ylabel("FVU (mean of layers)")
        ax.set_title(args.title or args.log.name, fontsize=9)
        fig.tight_layout()
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=120)
        print("plot:", args.plot)


if __name__ == "__main__":
    main()
