"""One attention head of the frozen linear model, forward and transposed.

With the pattern A_h [q, k] and every norm scale frozen (METHOD.md section 2), block l's attention
writes  post( sum_h sum_k A_h[q, k] ln1_k(x_k) W_V_h W_O_h )  into the residual stream at q, where
ln1_k(x) = w1 * center(x) / s_k is linear and post() is Gemma's post-attention norm (or identity).
Both are linear and applied per position, so the output is a sum over heads: head h's share is
the same formula with only A_h. `attention_backward_per_head` returns those shares of
FrozenBlocks.attention_backward (their sum is it, tested); the forward pieces below propagate a
node's contribution to the residual stream up the layers (circuits.attention.loadings, .qk).

Shapes: S sources (or B target rows), P positions, d residual width, H heads, e head dim.
"""

from __future__ import annotations

import torch

from circuits.attribution.frozen_backward import FrozenBlocks, norm_backward


def norm_forward(x_pos_d: torch.Tensor, scale_pos: torch.Tensor, weight_d: torch.Tensor | None,
                 centered: bool) -> torch.Tensor:
    """A frozen norm's linear part: w * center(x) / scale (its bias is a constant, not a node's).
    x [..., P, d], scale [P]. The transpose of norm_backward."""
    if centered:
        x_pos_d = x_pos_d - x_pos_d.mean(-1, keepdim=True)
    x_pos_d = x_pos_d / scale_pos[:, None]
    return x_pos_d if weight_d is None else x_pos_d * weight_d


def post_attention_forward(blocks: FrozenBlocks, layer: int, out_pos_d: torch.Tensor,
                           post_scale_pos: torch.Tensor | None) -> torch.Tensor:
    if not blocks.has_ln1_post:
        return out_pos_d
    return norm_forward(out_pos_d, post_scale_pos, blocks.ln1_post_w[layer], blocks.centered)


def post_attention_backward(blocks: FrozenBlocks, layer: int, grad_pos_d: torch.Tensor,
                            post_scale_pos: torch.Tensor | None) -> torch.Tensor:
    if not blocks.has_ln1_post:
        return grad_pos_d
    return norm_backward(grad_pos_d, post_scale_pos, blocks.ln1_post_w[layer], blocks.centered)


def ln1_backward(blocks: FrozenBlocks, layer: int, grad_pos_d: torch.Tensor, scale_pos: torch.Tensor) -> torch.Tensor:
    if not blocks.has_norm:
        return grad_pos_d
    return norm_backward(grad_pos_d, scale_pos, blocks.ln1_w[layer], blocks.centered)


def attention_backward_per_head(blocks: FrozenBlocks, layer: int, grad_b_p_d: torch.Tensor,
                                pattern_head_q_k: torch.Tensor, ln1_scale_pos: torch.Tensor,
                                ln1_post_scale_pos: torch.Tensor | None = None) -> torch.Tensor:
    """Each head's share [B, H, P, d] of FrozenBlocks.attention_backward (gradient at resid_pre from
    the gradient at resid_mid, OV path only): summed over H it is that function's result."""
    g = post_attention_backward(blocks, layer, grad_b_p_d, ln1_post_scale_pos)
    z_b_h_q_e = torch.einsum("bqd,hed->bhqe", g, blocks.W_O_head_e_d[layer])
    v_b_h_k_e = torch.einsum("hqk,bhqe->bhke", pattern_head_q_k, z_b_h_q_e)
    g_ln_b_h_k_d = torch.einsum("bhke,hde->bhkd", v_b_h_k_e, blocks.W_V_head_d_e[layer])
    if not blocks.has_norm:
        return g_ln_b_h_k_d
    return norm_backward(g_ln_b_h_k_d, ln1_scale_pos, blocks.ln1_w[layer], blocks.centered)


def kv_values(blocks: FrozenBlocks, layer: int, x_s_p_d: torch.Tensor, ln1_scale_pos: torch.Tensor) -> torch.Tensor:
    """Value vectors [S, P, G, e] of residual-stream contributions x [S, P, d], per value head (G = H
    without grouped-query attention; linear part: no b_V): one [S*P, d] x [d, G*e] product with
    ln1's weight folded in (FrozenBlocks.W_V_ln1_d_ge), then ln1's frozen scale per position."""
    S, P, d = x_s_p_d.shape
    G, e = blocks.W_V_kv_d_e[layer].shape[0], blocks.W_V_kv_d_e[layer].shape[2]
    v = (x_s_p_d.reshape(S * P, d) @ blocks.W_V_ln1_d_ge[layer]).view(S, P, G * e)
    if blocks.has_norm:
        v = v.div_(ln1_scale_pos[:, None])
    return v.view(S, P, G, e)


MIX_QUERY_BLOCK = 16  # queries mixed together: a block reads the keys up to its last query only


def mix_positions(pattern_head_q_k: torch.Tensor, values_s_k_g_e: torch.Tensor) -> torch.Tensor:
    """Each query head's output z [S, Q, H, e] from the value vectors per value head [S, K, G, e]
    (query heads h*G/H.. read value head g, as FrozenBlocks.W_V_head_d_e repeats them), for a
    causal pattern over one window (Q == K, zero above the diagonal): one batched product per value
    head and block of MIX_QUERY_BLOCK queries, over the keys up to the block's last query only."""
    H, Q, K = pattern_head_q_k.shape
    S, _, G, e = values_s_k_g_e.shape
    if Q != K:
        raise ValueError(f"mix_positions needs a square causal window, got {Q} queries and {K} keys")
    r = H // G
    v_g_k_se = values_s_k_g_e.permute(2, 1, 0, 3).reshape(G, K, S * e)
    pattern_g_r_q_k = pattern_head_q_k.view(G, r, Q, K)
    z = torch.empty(S, Q, H, e, device=values_s_k_g_e.device, dtype=values_s_k_g_e.dtype)
    for q0 in range(0, Q, MIX_QUERY_BLOCK):
        q1 = min(q0 + MIX_QUERY_BLOCK, Q)
        block = torch.bmm(pattern_g_r_q_k[:, :, q0:q1, :q1].reshape(G, r * (q1 - q0), q1), v_g_k_se[:, :q1])
        z[:, q0:q1] = block.view(G, r, q1 - q0, S, e).permute(3, 2, 0, 1, 4).reshape(S, q1 - q0, H, e)
    return z


def add_self_attention(z_s_q_h_e: torch.Tensor, diagonal_h_q: torch.Tensor, values_s_q_g_e: torch.Tensor) -> torch.Tensor:
    """z from other positions only (mixed with the pattern's diagonal zeroed) plus each head's
    attention to its own position times the value there: the whole z, in place."""
    S, Q, H, e = z_s_q_h_e.shape
    G = values_s_q_g_e.shape[2]
    z_s_q_g_r_e = z_s_q_h_e.view(S, Q, G, H // G, e)
    z_s_q_g_r_e.addcmul_(values_s_q_g_e[:, :, :, None], diagonal_h_q.T.reshape(1, Q, G, H // G, 1))
    return z_s_q_h_e


def heads_output(blocks: FrozenBlocks, layer: int, z_s_q_h_e: torch.Tensor,
                 post_scale_pos: torch.Tensor | None) -> torch.Tensor:
    """What the frozen attention layer adds to resid_mid [S, Q, d] from each head's output z (no
    bias: b_V and b_O are constants): one [S*Q, H*e] x [H*e, d] product."""
    S, Q, H, e = z_s_q_h_e.shape
    W_O = blocks.W_O_head_e_d[layer]
    out = (z_s_q_h_e.reshape(S * Q, H * e) @ W_O.reshape(H * e, W_O.shape[-1])).view(S, Q, W_O.shape[-1])
    return post_attention_forward(blocks, layer, out, post_scale_pos)


def head_readout(blocks: FrozenBlocks, layer: int, grad_b_d: torch.Tensor,
                 post_scale_b: torch.Tensor | None) -> torch.Tensor:
    """The z-space read-out [B, H, e] of a gradient at resid_mid [B, d] (one position per row):
    head h's output z_h adds z_h . readout[h] to the target."""
    g = post_attention_backward(blocks, layer, grad_b_d, post_scale_b)
    return torch.einsum("bd,hed->bhe", g, blocks.W_O_head_e_d[layer])


def value_backward(blocks: FrozenBlocks, layer: int, readout_b_h_e: torch.Tensor, ln1_scale_b: torch.Tensor) -> torch.Tensor:
    """Gradient at resid_pre [B, d] of the value paths of all heads, for read-outs [B, H, e] (already
    weighted by each head's pattern entry) and the key position's frozen ln1 scale [B] (one key
    position per row). Query heads sharing a value head are summed before its projection."""
    B, H, e = readout_b_h_e.shape
    W_V = blocks.W_V_kv_d_e[layer]  # [G, d, e]
    r_b_g_e = readout_b_h_e.view(B, W_V.shape[0], H // W_V.shape[0], e).sum(2)
    g = torch.einsum("bge,gde->bd", r_b_g_e, W_V)
    if not blocks.has_norm:
        return g
    return norm_backward(g, ln1_scale_b, blocks.ln1_w[layer], blocks.centered)
