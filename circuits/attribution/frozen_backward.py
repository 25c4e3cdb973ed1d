"""Backward passes through the frozen linear model, written out by hand (METHOD.md section 3).

With attention patterns and norm scales frozen and gradients stopped at MLP outputs, the map
from the residual stream at one layer to a later one is linear: the residual connection plus each
attention layer's OV circuit (pattern^T, W_O^T, W_V^T, the frozen norm). We apply its transpose
to a batch of gradient rows directly instead of asking autograd to replay the forward pass, which
lets a batch of targets use only the layers below and the positions up to its deepest target.

Shapes: B target rows, P positions (the batch's causal cone), d residual width, H heads, e head dim.
"""

from __future__ import annotations

import torch


def norm_backward(grad_pos_d: torch.Tensor, scale_pos: torch.Tensor, weight_d: torch.Tensor | None,
                  centered: bool) -> torch.Tensor:
    """Transpose of a frozen norm x -> w * center(x) / scale (LayerNorm) or w * x / scale (RMSNorm).

    grad [..., P, d], scale [P] (or [B, P]: one scale per row of a batch of several prompts).
    The centering projection is symmetric, so it applies as is.
    """
    g = grad_pos_d if weight_d is None else grad_pos_d * weight_d
    if centered:
        g = g - g.mean(-1, keepdim=True)
    return g / scale_pos[..., None]


class FrozenBlocks:
    """The weights the frozen backward needs, read once from a HookedTransformer."""

    def __init__(self, model):
        cfg = model.cfg
        self.n_layers = cfg.n_layers
        norm = cfg.normalization_type or ""
        self.centered = norm.startswith("LN")  # LN / LNPre center; RMS / RMSPre do not
        self.has_norm = bool(norm)
        self.W_O_head_e_d = [b.attn.W_O.detach().float() for b in model.blocks]  # [H, e, d]
        # [G, d, e]: one per value head (grouped-query attention: TransformerLens' W_V repeats them)
        self.W_V_kv_d_e = [getattr(b.attn, "_W_V", b.attn.W_V).detach().float() for b in model.blocks]
        self.ln1_w = [self._weight(b.ln1) for b in model.blocks]
        self.ln2_w = [self._weight(b.ln2) for b in model.blocks]
        # Gemma-2/3: a norm on the attention output before it joins the residual stream
        self.has_ln1_post = bool(getattr(cfg, "use_normalization_before_and_after", False))
        self.ln1_post_w = [self._weight(getattr(b, "ln1_post", None)) for b in model.blocks]
        self.ln2_post_w = [self._weight(getattr(b, "ln2_post", None)) for b in model.blocks]
        self.lnf_w = self._weight(getattr(model, "ln_final", None))
        self.W_U_d_vocab = model.W_U.detach().float()

    @property
    def W_V_head_d_e(self) -> list[torch.Tensor]:
        """Per layer [H, d, e]: each query head's value projection (a value head repeated for the
        query heads that share it), for what splits attention by head (circuits.attention)."""
        if not hasattr(self, "_W_V_head"):
            H = self.W_O_head_e_d[0].shape[0]
            self._W_V_head = [W.repeat_interleave(H // W.shape[0], dim=0) for W in self.W_V_kv_d_e]
        return self._W_V_head

    @property
    def W_V_ln1_d_ge(self) -> list[torch.Tensor]:
        """Per layer [d, G * e]: the value heads' projections side by side with ln1's linear part
        folded in (its weight, and its centering for LayerNorm), so that a contribution's values
        are (x @ W) / ln1's frozen scale at its position (circuits.attention.heads.kv_values)."""
        if not hasattr(self, "_W_V_ln1"):
            self._W_V_ln1 = []
            for l, W in enumerate(self.W_V_kv_d_e):
                W_d_ge = W.permute(1, 0, 2).reshape(W.shape[1], -1)
                if self.has_norm and self.ln1_w[l] is not None:
                    W_d_ge = self.ln1_w[l][:, None] * W_d_ge
                if self.centered:  # center(x) @ W = x @ (W - its column means)
                    W_d_ge = W_d_ge - W_d_ge.mean(0, keepdim=True)
                self._W_V_ln1.append(W_d_ge.contiguous())
        return self._W_V_ln1

    @staticmethod
    def _weight(norm) -> torch.Tensor | None:
        w = getattr(norm, "w", None)
        return None if w is None else w.detach().float()

    def attention_backward(self, layer: int, grad_pos_d: torch.Tensor, pattern_blocks,
                           ln1_scale_pos: torch.Tensor, ln1_post_scale_pos: torch.Tensor | None = None
                           ) -> torch.Tensor:
        """Gradient at the attention input (resid_pre) from the gradient at its output (resid_mid),
        through the OV path only (and the frozen post-attention norm where the model has one);
        grad [B, P, d], the pattern as causal query blocks (q0, [H, Q, q0 + Q]) (circuits.
        frozen_patterns), or (q0, block, rows) for a block that only rows `rows` (a slice) read
        (rows of several prompts in one sweep: circuits.attribution.batched) -> [B, P, d]: a key only receives from queries at or after it, so the masked
        half is never touched. Query heads sharing a value head (grouped-query attention) are summed
        before the value projection, which then runs once per value head. Excludes the residual
        connection (the caller adds it)."""
        W_O, W_V = self.W_O_head_e_d[layer], self.W_V_kv_d_e[layer]
        if self.has_ln1_post:
            grad_pos_d = norm_backward(grad_pos_d, ln1_post_scale_pos, self.ln1_post_w[layer], self.centered)
        B, P, _ = grad_pos_d.shape
        H, e = W_O.shape[0], W_O.shape[1]
        z_b_h_q_e = torch.einsum("bqd,hed->bhqe", grad_pos_d, W_O)
        v_b_h_k_e = torch.zeros(B, H, P, e, device=grad_pos_d.device)
        for item in pattern_blocks:  # (q0, [H, Q, K]), or (q0, block, rows): a block for some rows only
            q0, block_h_q_k, rows = item if len(item) == 3 else (*item, slice(None))
            q1, k1 = q0 + block_h_q_k.shape[1], block_h_q_k.shape[2]
            v_b_h_k_e[rows, :, :k1] += torch.einsum("hqk,bhqe->bhke", block_h_q_k, z_b_h_q_e[rows, :, q0:q1])
        G = W_V.shape[0]
        if G != H:  # query heads g*H/G .. (g+1)*H/G - 1 read value head g
            v_b_h_k_e = v_b_h_k_e.view(B, G, H // G, P, e).sum(2)
        g_ln_b_k_d = torch.einsum("bhke,hde->bkd", v_b_h_k_e, W_V)
        if not self.has_norm:
            return g_ln_b_k_d
        return norm_backward(g_ln_b_k_d, ln1_scale_pos, self.ln1_w[layer], self.centered)

    def output_hook_backward(self, layer: int, grad_pos_d: torch.Tensor,
                             ln2_post_scale_pos: torch.Tensor | None) -> torch.Tensor:
        """Gradient at the transcoder's output hook from the gradient at the residual stream where
        MLP `layer` writes [..., P, d]: identity for hook_mlp_out; for mlp.hook_out on a model with a
        post-MLP norm (Gemma), the transpose of that norm with its frozen scale [P]."""
        if ln2_post_scale_pos is None:
            return grad_pos_d
        return norm_backward(grad_pos_d, ln2_post_scale_pos, self.ln2_post_w[layer], self.centered)

    def input_hook_backward(self, layer: int, vec_pos_d: torch.Tensor, ln2_scale_pos: torch.Tensor,
                            input_hook: str) -> torch.Tensor:
        """Map vectors read at the transcoder's input hook [..., P, d] to the residual stream
        (resid_mid): identity for hook_resid_mid, the frozen ln2 for ln2.hook_normalized (no
        weight) and hook_mlp_in (with the ln2 weight)."""
        if input_hook == "hook_resid_mid" or not self.has_norm:
            return vec_pos_d
        weight = self.ln2_w[layer] if input_hook == "hook_mlp_in" else None
        return norm_backward(vec_pos_d, ln2_scale_pos, weight, self.centered)

    def final_norm_backward(self, vec_n_d: torch.Tensor, lnf_scale: torch.Tensor) -> torch.Tensor:
        """Map vectors [n, d] read after ln_final (logit directions) at one position, whose frozen
        final-norm scale is `lnf_scale` (a scalar tensor), to the final residual stream."""
        if not self.has_norm:
            return vec_n_d
        return norm_backward(vec_n_d, lnf_scale.reshape(1).expand(vec_n_d.shape[0]), self.lnf_w, self.centered)
