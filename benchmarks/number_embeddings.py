"""How a model's number tokens are coded: R^2 of the ones and tens digits on the embeddings of
10..99, and where the embeddings' Fourier power over n lies. Explains why `world` forms no
ones-digit features (docs/case_studies.md).

    python benchmarks/number_embeddings.py --model world

Not a test; it prints figures.
"""

from __future__ import annotations

import argparse

import torch


def digit_r2(W_nd: torch.Tensor, labels_n: torch.Tensor) -> float:
    """Share of the (centred) embeddings' variance explained by one-hot digit labels (least squares)."""
    X = torch.nn.functional.one_hot(labels_n).double()
    W = W_nd.double() - W_nd.double().mean(0)
    beta = torch.linalg.lstsq(X, W).solution
    return float(1 - (W - X @ beta).pow(2).sum() / W.pow(2).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="world")
    args = ap.parse_args()
    from circuits.models import load_model

    loaded = load_model(args.model, progress=False)
    first = loaded.meta["numbers"]["first_id"]  # number n is token first_id + n
    n = torch.arange(10, 100)
    W_nd = loaded.model.W_E[first + n].detach()
    print(f"{args.model}: embeddings of 10..99, d_model {W_nd.shape[1]}")
    print(f"  R^2 ones digit {digit_r2(W_nd, n % 10):.3f}, tens digit {digit_r2(W_nd, n // 10 - 1):.3f}")
    power = torch.fft.rfft(W_nd.double() - W_nd.double().mean(0), dim=0).abs().pow(2).sum(1)
    share = power / power.sum()
    periods = {len(n) / k: float(share[k]) for k in range(1, len(share))}
    top = sorted(periods.items(), key=lambda kv: -kv[1])[:4]
    print("  Fourier power by period over n: " + ", ".join(f"{p:.1f}: {s:.3f}" for p, s in top)
          + f"; period 10: {periods[10.0]:.3f}")


if __name__ == "__main__":
    main()
