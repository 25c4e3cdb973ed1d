"""A fused training forward for the `world` HookedTransformer: same parameters, same numbers.

TransformerLens computes attention with einsums and LayerNorm by hand, with a hook point on every
intermediate; that is what makes it good to trace and slow to train on a CPU. Training only needs
the final residual stream at the answer positions, so this module computes exactly that with
torch's fused ops (layer_norm, scaled_dot_product_attention, addmm), and runs the last block only
where a loss is taken. Tests check it equals the HookedTransformer forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _qkv(block, x: torch.Tensor, eps: float) -> tuple[torch.Tensor, ...]:
    """Queries, keys, values [batch, head, pos, d_head] of one TransformerLens block."""
    attn = block.attn
    batch, n_pos, d_model = x.shape
    n_heads, d_head = attn.W_Q.shape[0], attn.W_Q.shape[2]
    h = F.layer_norm(x, (d_model,), block.ln1.w, block.ln1.b, eps).reshape(batch * n_pos, d_model)
    W_qkv = torch.cat([attn.W_Q, attn.W_K, attn.W_V]).permute(1, 0, 2).reshape(d_model, -1)
    b_qkv = torch.cat([attn.b_Q, attn.b_K, attn.b_V]).reshape(-1)
    qkv = torch.addmm(b_qkv, h, W_qkv).view(batch, n_pos, 3 * n_heads, d_head).transpose(1, 2)
    return qkv.split(n_heads, dim=1)


def _attn_out_and_mlp(block, x: torch.Tensor, z: torch.Tensor, eps: float) -> torch.Tensor:
    """Residual after the block, given its input x [..., d_model] and attention z [..., head*d_head]."""
    attn, mlp = block.attn, block.mlp
    d_model = x.shape[-1]
    x = x + torch.addmm(attn.b_O, z.reshape(-1, z.shape[-1]), attn.W_O.reshape(-1, d_model)).view(x.shape)
    h = F.layer_norm(x, (d_model,), block.ln2.w, block.ln2.b, eps).reshape(-1, d_model)
    hidden = F.gelu(torch.addmm(mlp.b_in, h, mlp.W_in))
    return x + torch.addmm(mlp.b_out, hidden, mlp.W_out).view(x.shape)


def _shared_prefix_length(tokens: torch.Tensor, first_target: int) -> int:
    """How many leading positions hold the same token in every row (at most first_target)."""
    same = (tokens == tokens[:1]).all(0)  # [pos]
    return int(same.long().cumprod(0).sum().clamp(max=first_target))


def answer_residuals(model, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The final residual stream [n_targets, d_model] at the positions where `mask` [batch, pos] is
    True, for a HookedTransformer with standard positions, LayerNorm and GELU (no padding mask).

    Equal to `model(tokens, stop_at_layer=model.cfg.n_layers)[mask]` (tests check it). Positions
    every row shares (`BOS calc :`) are computed once, and the last block runs only at the masked
    positions: together about 3x faster to train on CPU than the HookedTransformer forward.
    """
    cfg = model.cfg
    batch, n_pos = tokens.shape
    rows, cols = mask.nonzero(as_tuple=True)
    n_pre = _shared_prefix_length(tokens, int(cols.min()))
    embed = model.embed.W_E[tokens[:, n_pre:]] + model.pos_embed.W_pos[n_pre:n_pos]
    x_pre = model.embed.W_E[tokens[:1, :n_pre]] + model.pos_embed.W_pos[:n_pre]  # [1, n_pre, d]
    x = embed  # [batch, pos - n_pre, d_model]
    # a query at suffix position i sees every prefix key and the suffix keys j <= i
    n_suf = n_pos - n_pre
    visible = torch.cat([torch.ones(n_suf, n_pre, dtype=torch.bool),
                         torch.ones(n_suf, n_suf, dtype=torch.bool).tril()], 1)
    for i, block in enumerate(model.blocks):
        q_pre, k_pre, v_pre = _qkv(block, x_pre, cfg.eps)
        q, k, v = _qkv(block, x, cfg.eps)
        k = torch.cat([k_pre.expand(batch, -1, -1, -1), k], 2)
        v = torch.cat([v_pre.expand(batch, -1, -1, -1), v], 2)
        if i == cfg.n_layers - 1:
            break
        if n_pre:
            z_pre = F.scaled_dot_product_attention(q_pre, k_pre, v_pre, is_causal=True)
            x_pre = _attn_out_and_mlp(block, x_pre, z_pre.transpose(1, 2).reshape(1, n_pre, -1), cfg.eps)
        z = F.scaled_dot_product_attention(q, k, v, attn_mask=visible)  # scale 1/sqrt(d_head), as TL
        x = _attn_out_and_mlp(block, x, z.transpose(1, 2).reshape(batch, n_suf, -1), cfg.eps)
    # last block: only the queries at the answer positions
    sel = cols - n_pre
    q_sel = q[rows, :, sel][:, :, None]  # [n_targets, head, 1, d_head]
    causal = torch.arange(n_pos)[None, :] <= cols[:, None]  # [n_targets, pos]
    z = F.scaled_dot_product_attention(q_sel, k[rows], v[rows], attn_mask=causal[:, None, None, :])
    return _attn_out_and_mlp(block, x[rows, sel], z.reshape(len(rows), -1), cfg.eps)
