"""The training objective (METHOD.md section 1), on normalised activations:

  loss = sum_l ||y_hat_l - y_l||^2                                   (reconstruction)
       + lambda   * sum_l sum_i tanh(c * ||W_dec_i|| * a_i)           (sparsity)
       + lambda_p * sum_l sum_i relu(theta_i - h_i) * ||W_dec_i||     (pre-activation; keeps features alive)
each averaged over tokens. ||W_dec_i|| is feature i's decoders concatenated over its output layers.

The whole objective is one nn.Module so DistributedDataParallel sees every parameter use
inside a single forward.
"""

from __future__ import annotations

import torch
from torch import nn

from transcoders.transcoder import Transcoder


class TranscoderObjective(nn.Module):
    def __init__(self, transcoder: Transcoder, sparsity_c: float, preact_coef: float):
        super().__init__()
        self.transcoder = transcoder
        self.sparsity_c = sparsity_c
        self.preact_coef = preact_coef

    def forward(self, x_tok_layer_d: torch.Tensor, y_tok_layer_d: torch.Tensor, sparsity_coef: float):
        """Returns (loss, parts) with parts = {recon, sparsity, preact} (detached) and acts [N, L, F]."""
        tc = self.transcoder
        y_hat, acts, pre = tc(x_tok_layer_d)
        recon = (y_hat - y_tok_layer_d).pow(2).sum(dim=(-2, -1)).mean()
        norms_layer_feat = tc.decoder_norms()
        sparsity = torch.tanh(self.sparsity_c * norms_layer_feat * acts).sum(dim=(-2, -1)).mean()
        loss = recon + sparsity_coef * sparsity
        preact = torch.zeros((), device=loss.device)
        if self.preact_coef > 0 and tc.cfg.activation != "topk":
            theta = tc.threshold if tc.threshold is not None else torch.zeros_like(pre[0])
            preact = ((theta - pre).relu() * norms_layer_feat).sum(dim=(-2, -1)).mean()
            loss = loss + self.preact_coef * preact
        parts = {"recon": recon.detach(), "sparsity": sparsity.detach(), "preact": preact.detach()}
        return loss, parts, y_hat.detach(), acts.detach()
