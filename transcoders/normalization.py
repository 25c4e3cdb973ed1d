"""Per-layer activation normalisation used during training, and folding it back at save.

Training sees x' = s_in[l] * x and y' = s_out[l] * y with scales chosen so E||x'_l||^2 = E||y'_l||^2 = d.
A transcoder trained on (x', y') is turned into one on raw activations by
  W_enc[l] *= s_in[l]                    (h = W_enc x' + b_enc is unchanged)
  W_dec[l'][:, k] /= s_out[l' + k]       b_dec[l] /= s_out[l]
  W_skip[l] *= s_in[l] / s_out[l]
Thresholds and encoder biases live in feature space and do not change.
"""

from __future__ import annotations

import copy

import torch

from transcoders.transcoder import Transcoder


def estimate_scales(acts_tok_layer_d: torch.Tensor) -> torch.Tensor:
    """s [L] with E||s_l * v_l||^2 = d over the given tokens."""
    d = acts_tok_layer_d.shape[-1]
    mean_sq = acts_tok_layer_d.double().pow(2).sum(-1).mean(0)
    return (d / mean_sq.clamp_min(1e-12)).sqrt().float()


@torch.no_grad()
def fold_normalization(tc: Transcoder, s_in_layer: torch.Tensor, s_out_layer: torch.Tensor) -> Transcoder:
    """A copy of `tc` that works on raw activations."""
    raw = copy.deepcopy(tc).cpu()
    s_in, s_out = s_in_layer.cpu().float(), s_out_layer.cpu().float()
    raw.W_enc.mul_(s_in[:, None, None])
    for l_src, W in enumerate(raw.W_dec):
        n_out = W.shape[1]
        W.div_(s_out[l_src:l_src + n_out][None, :, None])
    raw.b_dec.div_(s_out[:, None])
    if raw.W_skip is not None:
        raw.W_skip.mul_((s_in / s_out)[:, None, None])
    return raw
