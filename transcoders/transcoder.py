"""One transcoder type: cross-layer (CLT) or per-layer (PLT), optional skip, JumpReLU/ReLU/TopK.

Shapes (L layers, F features per layer, d residual width):
  W_enc  [L, F, d]   b_enc [L, F]   threshold [L, F] (JumpReLU)
  W_dec[l]  [F, n_out(l), d]  decoders of layer-l features to layers l .. l+n_out-1
            (CLT: n_out = L - l; PLT: n_out = 1)
  b_dec  [L, d]      W_skip [L, d, d] (optional; y += x @ W_skip[l])
Forward (METHOD.md section 1):
  h_l = W_enc_l x_l + b_enc_l;  a_l = act(h_l);  y_hat_l = sum_{l' <= l} W_dec_{l'->l} a_l' + b_dec_l
The module works on raw (unnormalised) activations; training normalisation is folded in at save.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from transcoders.activations import jumprelu, topk_relu
from transcoders.config import TranscoderConfig
from transcoders.rules import TranscoderRules, weight_digest


class Transcoder(TranscoderRules, nn.Module):
    def __init__(self, cfg: TranscoderConfig, dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.cfg = cfg
        L, F, d = cfg.n_layers, cfg.n_features, cfg.d_model
        kw = {"dtype": dtype, "device": device}
        self.W_enc = nn.Parameter(torch.empty(L, F, d, **kw))
        self.b_enc = nn.Parameter(torch.zeros(L, F, **kw))
        self.W_dec = nn.ParameterList(
            [nn.Parameter(torch.empty(F, cfg.n_outputs(l), d, **kw)) for l in range(L)])
        self.b_dec = nn.Parameter(torch.zeros(L, d, **kw))
        if cfg.activation == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(L, F, **kw))
        else:
            self.register_parameter("threshold", None)
        if cfg.skip:
            self.W_skip = nn.Parameter(torch.zeros(L, d, d, **kw))
        else:
            self.register_parameter("W_skip", None)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        L, F, d = self.cfg.n_layers, self.cfg.n_features, self.cfg.d_model
        nn.init.uniform_(self.W_enc, -1 / d**0.5, 1 / d**0.5)
        for l, W in enumerate(self.W_dec):
            bound = 1 / (F * self.cfg.n_layers) ** 0.5 if self.cfg.kind == "clt" else 1 / F**0.5
            nn.init.uniform_(W, -bound, bound)
        if self.threshold is not None:
            self.threshold.fill_(0.0)

    # --- the three steps of the forward pass -------------------------------------------------
    def encode(self, x_layer_d: torch.Tensor) -> torch.Tensor:
        """Pre-activations h [..., L, F] from inputs x [..., L, d]."""
        return torch.einsum("...ld,lfd->...lf", x_layer_d, self.W_enc) + self.b_enc

    def activate(self, pre_layer_feat: torch.Tensor) -> torch.Tensor:
        """Feature activations a [..., L, F]."""
        act = self.cfg.activation
        if act == "jumprelu":
            return jumprelu(pre_layer_feat, self.threshold, self.cfg.jumprelu_bandwidth)
        if act == "relu":
            return pre_layer_feat.relu()
        return topk_relu(pre_layer_feat, self.cfg.topk)

    def encode_layer(self, x_pos_d: torch.Tensor, layer: int) -> torch.Tensor:
        """Pre-activations h [..., F] of one layer's features from that layer's input x [..., d]."""
        return x_pos_d @ self.W_enc[layer].T + self.b_enc[layer]

    def decode_layer(self, acts_by_layer: Sequence[torch.Tensor], layer: int,
                     x_pos_d: torch.Tensor | None = None) -> torch.Tensor:
        """y_hat_l [..., d] = sum_{l' <= l} a_l' W_dec_{l'->l} + b_dec_l (+ x_l W_skip_l), from the
        activations [..., F] of layers 0..l (`acts_by_layer[l']`) and, with a skip term, x_l [..., d]."""
        y = self.b_dec[layer].expand(*acts_by_layer[layer].shape[:-1], -1)
        for src in range(layer + 1):
            if self.cfg.kind == "plt" and src != layer:
                continue
            y = y + acts_by_layer[src] @ self.decoder_to_layer(src, layer)
        skip_d_d = self.skip_matrix(layer)
        if skip_d_d is not None:
            if x_pos_d is None:
                raise ValueError("a transcoder with a skip term needs its inputs to decode")
            y = y + x_pos_d @ skip_d_d
        return y

    def decode(self, acts_layer_feat: torch.Tensor, x_layer_d: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstructed MLP outputs y_hat [..., L, d] from activations a [..., L, F]."""
        L = self.cfg.n_layers
        outs = [self.b_dec[l].expand(*acts_layer_feat.shape[:-2], -1) for l in range(L)]
        for l_src in range(L):
            W = self.W_dec[l_src]  # [F, n_out, d]
            written = torch.einsum("...f,fkd->...kd", acts_layer_feat[..., l_src, :], W)
            for k in range(W.shape[1]):
                outs[l_src + k] = outs[l_src + k] + written[..., k, :]
        y_hat = torch.stack(outs, dim=-2)
        if self.W_skip is not None:
            if x_layer_d is None:
                raise ValueError("a transcoder with a skip term needs its inputs to decode")
            y_hat = y_hat + torch.einsum("...ld,lde->...le", x_layer_d, self.W_skip)
        return y_hat

    def forward(self, x_layer_d: torch.Tensor):
        """Returns (y_hat [..., L, d], acts [..., L, F], pre_acts [..., L, F])."""
        pre = self.encode(x_layer_d)
        acts = self.activate(pre)
        return self.decode(acts, x_layer_d), acts, pre

    # --- views used by attribution and the loss ----------------------------------------------
    def decoder_norms(self) -> torch.Tensor:
        """||W_dec_i|| [L, F]: norm of each feature's decoders concatenated over output layers."""
        return torch.stack([W.pow(2).sum(dim=(1, 2)).sqrt() for W in self.W_dec])

    def decoder_to_layer(self, source_layer: int, target_layer: int) -> torch.Tensor:
        """W_dec_{source -> target} [F, d] (zeros if the feature does not write there)."""
        k = target_layer - source_layer
        W = self.W_dec[source_layer]
        if k < 0 or k >= W.shape[1]:
            return torch.zeros(W.shape[0], W.shape[2], dtype=W.dtype, device=W.device)
        return W[:, k]

    # --- rows, read by attribution (LazyTranscoder implements the same without materialising) ---
    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    def encoder_rows(self, layer: int, features: torch.Tensor) -> torch.Tensor:
        """Encoder rows [n, d] of `features` at `layer`."""
        return self.W_enc.detach()[layer, features]

    def decoder_rows(self, layer: int, features: torch.Tensor) -> torch.Tensor:
        """Decoder rows [n, n_out, d] of `features` read at `layer` (to layers layer .. layer+n_out-1)."""
        return self.W_dec[layer].detach()[features]

    def skip_matrix(self, layer: int) -> torch.Tensor | None:
        """W_skip of `layer` [d, d] (y += x @ W_skip), or None without a skip term."""
        return None if self.W_skip is None else self.W_skip.detach()[layer]

    @torch.no_grad()
    def fold_input_norm(self, weight_layer_d: torch.Tensor, bias_layer_d: torch.Tensor | None = None) -> None:
        """Read n instead of w * n + b (a norm's output before / after its weight and bias), exactly:
        W_enc <- W_enc diag(w), b_enc <- b_enc + W_enc b, W_skip <- diag(w) W_skip, b_dec <- b_dec + b W_skip."""
        w = weight_layer_d.to(self.W_enc)
        if bias_layer_d is not None:
            b = bias_layer_d.to(self.W_enc)
            self.b_enc += torch.einsum("lfd,ld->lf", self.W_enc, b)
            if self.W_skip is not None:
                self.b_dec += torch.einsum("ld,lde->le", b, self.W_skip)
        self.W_enc.mul_(w[:, None, :])
        if self.W_skip is not None:
            self.W_skip.mul_(w[:, :, None])

    def weight_digest(self) -> str:
        """sha256 of the first MiB (as float32) of W_enc and of each W_dec[l] (see rules.weight_digest)."""
        return weight_digest(list(self.W_enc.detach()), [W.detach() for W in self.W_dec])
