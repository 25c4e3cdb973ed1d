"""Reconstruction metrics: fraction of variance unexplained (FVU), L0, dead features.

FVU_l = sum_tokens ||y_l - y_hat_l||^2 / sum_tokens ||y_l - mean(y_l)||^2   (per layer)
L0_l  = mean over tokens of the number of active features at layer l
dead  = fraction of features that never fired on the data seen
All are accumulated over batches with `ReconstructionStats`, so a long stream costs O(L*F) memory.
"""

from __future__ import annotations

import torch


def fvu_per_layer(y_tok_layer_d: torch.Tensor, y_hat_tok_layer_d: torch.Tensor) -> torch.Tensor:
    """FVU [L] of one batch (the mean is the batch mean)."""
    err = (y_tok_layer_d - y_hat_tok_layer_d).pow(2).sum(dim=(0, 2))
    var = (y_tok_layer_d - y_tok_layer_d.mean(0, keepdim=True)).pow(2).sum(dim=(0, 2))
    return err / var.clamp_min(1e-12)


def l0_per_layer(acts_tok_layer_feat: torch.Tensor) -> torch.Tensor:
    """Mean number of active features per token, [L]."""
    return (acts_tok_layer_feat != 0).float().sum(-1).mean(0)


class ReconstructionStats:
    """Streaming FVU / L0 / firing counts over many batches (exact, not a batch average)."""

    def __init__(self, n_layers: int, n_features: int):
        self.n_tokens = 0
        self.err_sum_layer = torch.zeros(n_layers, dtype=torch.float64)
        self.y_sum_layer_d: torch.Tensor | None = None
        self.y_sq_sum_layer = torch.zeros(n_layers, dtype=torch.float64)
        self.active_sum_layer = torch.zeros(n_layers, dtype=torch.float64)
        self.fired_count_layer_feat = torch.zeros(n_layers, n_features, dtype=torch.float64)

    @torch.no_grad()
    def update(self, y: torch.Tensor, y_hat: torch.Tensor, acts: torch.Tensor) -> None:
        """y, y_hat [N, L, d]; acts [N, L, F]."""
        y64, yh64 = y.detach().double().cpu(), y_hat.detach().double().cpu()
        active = (acts.detach() != 0).cpu()
        self.n_tokens += y.shape[0]
        self.err_sum_layer += (y64 - yh64).pow(2).sum(dim=(0, 2))
        s = y64.sum(0)
        self.y_sum_layer_d = s if self.y_sum_layer_d is None else self.y_sum_layer_d + s
        self.y_sq_sum_layer += y64.pow(2).sum(dim=(0, 2))
        self.active_sum_layer += active.sum(dim=(0, 2)).double()
        self.fired_count_layer_feat += active.sum(0).double()

    def fvu_per_layer(self) -> torch.Tensor:
        n = max(self.n_tokens, 1)
        mean_sq = self.y_sum_layer_d.pow(2).sum(-1) / n  # n * ||mean||^2
        var = (self.y_sq_sum_layer - mean_sq).clamp_min(1e-12)
        return self.err_sum_layer / var

    def l0_per_layer(self) -> torch.Tensor:
        return self.active_sum_layer / max(self.n_tokens, 1)

    def dead_per_layer(self) -> torch.Tensor:
        """[L]: fraction of each layer's features that never fired."""
        return (self.fired_count_layer_feat == 0).double().mean(-1)

    def dead_fraction(self) -> float:
        return float(self.dead_per_layer().mean())  # every layer has the same number of features

    def summary(self) -> dict:
        fvu = self.fvu_per_layer()
        l0 = self.l0_per_layer()
        return {"fvu_per_layer": [round(float(v), 6) for v in fvu],
                "fvu_mean": round(float(fvu.mean()), 6),
                "l0_per_layer": [round(float(v), 3) for v in l0],
                "l0_total": round(float(l0.sum()), 3),
                "dead_fraction": round(self.dead_fraction(), 6),
                "dead_per_layer": [round(float(v), 4) for v in self.dead_per_layer()],
                "n_tokens": self.n_tokens}
