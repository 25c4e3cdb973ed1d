"""What every transcoder (in memory: transcoder.Transcoder; memory-mapped: lazy.LazyTranscoder)
computes by the same rule, written once: one layer's activation rule, one layer's features from its
input, the shape properties, and the weight digest that identifies a transcoder in graphs.

A subclass provides `cfg`, `threshold` ([L, F] or None) and `encode_layer(x, layer)`.
"""

from __future__ import annotations

import hashlib

import torch

from transcoders.activations import topk_relu
from transcoders.tensor_files import head_bytes


class TranscoderRules:
    """Mixin of the rules above (no state of its own)."""

    def activate_layer(self, pre_feat: torch.Tensor, layer: int) -> torch.Tensor:
        """Activations a [..., F] of one layer's features (same rule as `activate`)."""
        act = self.cfg.activation
        if act == "jumprelu":
            return pre_feat * (pre_feat > self.threshold[layer])
        if act == "relu":
            return pre_feat.relu()
        return topk_relu(pre_feat, self.cfg.topk)

    def layer_features(self, x_pos_d: torch.Tensor, layer: int) -> torch.Tensor:
        """a_l [..., F] = act(W_enc_l x_l + b_enc_l): one layer's features from that layer's input."""
        return self.activate_layer(self.encode_layer(x_pos_d, layer), layer)

    @property
    def n_layers(self) -> int:
        return self.cfg.n_layers

    @property
    def n_features(self) -> int:
        return self.cfg.n_features


def weight_digest(enc_layers: list[torch.Tensor], dec_layers: list[torch.Tensor], n_bytes: int = 1 << 20) -> str:
    """Hash of the first `n_bytes` (float32) of the layer-stacked encoder and of each decoder, read
    without copying whole matrices; equal to hashing W_enc [L, F, d] then each W_dec[l]."""
    h = hashlib.sha256()
    enc, left = b"", n_bytes
    for W in enc_layers:
        if left <= 0:
            break
        chunk = head_bytes(W, left)
        enc += chunk
        left -= len(chunk)
    h.update(enc)
    for W in dec_layers:
        h.update(head_bytes(W, n_bytes))
    return h.hexdigest()[:16]
