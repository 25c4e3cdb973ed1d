"""How much of each layer's FVU a few positions carry: some models write massive MLP outputs at a
handful of positions (SmolLM2-135M's layers 2 and 28), and a layer's FVU is then mostly how well
those few are reconstructed.

    python benchmarks/heavy_positions.py TRANSCODER_DIR CACHE_DIR [--rows 4096] [--top 0.01] [--layers 2,4,28]

CACHE_DIR: an activation cache (`circuits transcoders cache-activations`, or the held-out one the
trainer benchmarks build) of the transcoder's model and hooks. Prints per layer: FVU, the share of
the variance and of the squared error held by the top --top fraction of positions (by their own
variance and error), FVU without those positions, and the output norm's median and maximum.
Not a test; it prints one table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def read_rows(cache: Path, name: str, n: int) -> torch.Tensor:
    meta = json.loads((cache / "meta.json").read_text())
    rows = np.array(np.load(cache / name, mmap_mode="r")[:n])  # a writable copy
    t = torch.from_numpy(rows)
    return t.view(torch.bfloat16).float() if meta.get("dtype") == "bfloat16" else t.float()


def main() -> None:
    from transcoders.loading import load_transcoder

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("transcoder", type=Path)
    ap.add_argument("cache", type=Path)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--top", type=float, default=0.01, help="fraction of positions counted as the heavy ones")
    ap.add_argument("--layers", default=None, help="comma-separated layers (default: all)")
    args = ap.parse_args()
    x, y = read_rows(args.cache, "x.npy", args.rows), read_rows(args.cache, "y.npy", args.rows)
    tc = load_transcoder(args.transcoder)
    with torch.no_grad():
        y_hat = torch.cat([tc(x[i:i + 512])[0] for i in range(0, x.shape[0], 512)])
    err_n_l = (y - y_hat).pow(2).sum(-1)
    var_n_l = (y - y.mean(0)).pow(2).sum(-1)
    n_top = max(1, round(args.top * x.shape[0]))
    layers = [int(v) for v in args.layers.split(",")] if args.layers else range(y.shape[1])
    print(f"{x.shape[0]} positions; heavy = the top {n_top} ({args.top:.1%}) by variance (or by error)")
    print(f"{'layer':>5} {'FVU':>6} {'var share':>9} {'err share':>9} {'FVU w/o':>8} {'|y| median':>10} {'|y| max':>9}")
    for l in layers:
        e, v = err_n_l[:, l], var_n_l[:, l]
        heavy = v.topk(n_top).indices
        norms = y[:, l].norm(dim=-1)
        print(f"{l:5d} {float(e.sum() / v.sum()):6.3f} {float(v[heavy].sum() / v.sum()):9.3f} "
              f"{float(e.topk(n_top).values.sum() / e.sum()):9.3f} "
              f"{float((e.sum() - e[heavy].sum()) / (v.sum() - v[heavy].sum())):8.3f} "
              f"{float(norms.median()):10.2f} {float(norms.max()):9.2f}")


if __name__ == "__main__":
    main()
