"""CLT vs PLT at an equal number of features per layer, on the same model, data and budget.

    python benchmarks/clt_vs_plt.py --model world            # the default CLT config of `world`, and its PLT twin

Trains both (same TrainConfig except `kind`), measures the replacement model on held-out text
(circuits.training.fidelity) and prints one row per kind. Not a test; compare the table across versions.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

COLUMNS = ("kind", "features", "tokens", "train_s", "fvu_mean", "l0_total", "dead_fraction",
           "top1_agreement", "kl_mean", "ce_original", "ce_replacement")


def run(model: str, features: int | None, tokens: int | None, out: Path, seed: int, progress: bool) -> list[dict]:
    import torch

    from circuits.models.registry import BUILTIN_MODELS
    from circuits.models import load_model
    from circuits.training.train import train_for_model
    from transcoders.train_config import TrainConfig

    torch.set_num_threads(max(1, torch.get_num_threads()))
    loaded = load_model(model, progress=progress)
    base = getattr(BUILTIN_MODELS.get(model), "transcoder_config", None) or TrainConfig()
    rows = []
    for kind in ("clt", "plt"):
        given = {k: v for k, v in {"n_features": features, "tokens": tokens}.items() if v}
        cfg = base.updated({**given, "kind": kind, "seed": seed})
        t0 = time.perf_counter()
        result = train_for_model(loaded, cfg, out / kind, overwrite=True, progress=progress)
        fid = result.metrics["fidelity"]
        rows.append({"kind": kind, "features": cfg.transcoder.n_features, "tokens": result.metrics["training"]["tokens"],
                     "train_s": round(time.perf_counter() - t0, 1),
                     **{k: fid[k] for k in COLUMNS[4:]}})
    return rows


def print_table(rows: list[dict]) -> None:
    widths = {c: max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in COLUMNS}
    print("  ".join(c.rjust(widths[c]) for c in COLUMNS))
    for r in rows:
        print("  ".join(_fmt(r[c]).rjust(widths[c]) for c in COLUMNS))
    clt, plt = rows
    verdict = all((clt["fvu_mean"] < plt["fvu_mean"], clt["top1_agreement"] > plt["top1_agreement"]))
    print(f"\nCLT beats PLT on fvu_mean and top1_agreement: {'yes' if verdict else 'NO'}")


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="world")
    ap.add_argument("--features", type=int, help="features per layer, both kinds (default: the model's default)")
    ap.add_argument("--tokens", type=int, help="training tokens (default: the model's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="keep the transcoders here (default: a temp dir)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = run(args.model, args.features, args.tokens, args.out or Path(tmp), args.seed, not args.no_progress)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows)


if __name__ == "__main__":
    main()
