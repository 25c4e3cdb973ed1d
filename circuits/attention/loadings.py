"""Head loadings: an edge's split over the attention heads that carry it (Kamath, Ameisen et al. 2025).

An edge A[t, s] of the frozen linear model is a sum over paths from the source s (layer l_s,
position c_s) up to the target t (layer l_t, position c_t). A path moves along the residual stream,
through skip connections, and through attention heads; a head hop goes from a key position k to
a query position q, and is "cross-position" when k != q.

The rule: a path is attributed to the head of its LAST cross-position hop (the hop that brings
the information to the target's position). Paths that never leave c_s (only possible when
c_s == c_t: residual, skip and heads attending to their own position) form the remainder. The
split is a partition of the paths, so the loadings plus the remainder are the edge exactly:

  A[t, s] = sum_{l, h} D_t(l) . post( sum_{k != c_t} A_{l,h}[c_t, k] ln1_k(u_s(l, k)) W_V_h W_O_h )
            + [c_s == c_t] (same-position paths)
where u_s(l, k) is s's contribution to resid_pre of block l at position k (every path, through the
frozen model: circuits.attention.heads forward pieces) and D_t(l) is the gradient of t at resid_mid
of block l, position c_t, through same-position paths only (residual, skip, each head's diagonal
pattern entry). Cross-position edges have no remainder.

Shapes: T targets, S sources, E edges, L layers, H heads, P positions, d width, e head dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuits.attention.heads import (attention_forward, head_readout, head_value_backward, head_values,
                                      norm_forward, post_attention_backward)
from circuits.attribution.frozen_backward import FrozenBlocks
from circuits.attribution.rows import SourceLayout
from circuits.attribution.targets import TargetSeeds
from circuits.replacement.local import LocalReplacement


@dataclass
class SameBackward:
    """Same-position gradients of T targets: at resid_mid of each block (as head read-outs
    [T, L, H, e]), at each MLP output hook [T, L, d], and at the embeddings [T, d]."""

    readout_t_l_h_e: torch.Tensor
    mlp_out_t_l_d: torch.Tensor
    embed_t_d: torch.Tensor


def same_position_backward(rep: LocalReplacement, blocks: FrozenBlocks, transcoder, seeds: TargetSeeds) -> SameBackward:
    """The frozen backward of compute_rows restricted to each target's own position c_t."""
    T, d = len(seeds), rep.embed_pos_d.shape[1]
    L, H = blocks.n_layers, blocks.W_O_head_e_d[0].shape[0]
    e = blocks.W_O_head_e_d[0].shape[1]
    device = rep.embed_pos_d.device
    c = seeds.position
    g = torch.zeros(T, d, device=device)
    logit_rows = seeds.layer == L
    g[logit_rows] += seeds.vec_d[logit_rows]
    readout = torch.zeros(T, L, H, e, device=device)
    mlp_out = torch.zeros(T, L, d, device=device)
    post_mlp = rep.ln2_post_scale_layer_pos
    for l in range(L - 1, -1, -1):
        g_out = blocks.output_hook_backward(l, g, None if post_mlp is None else post_mlp[l, c])
        mlp_out[:, l] = g_out
        if transcoder.cfg.skip:
            g_x = g_out @ transcoder.skip_matrix(l).float().to(device).T  # live at BOS too, as the engine
            g = g + blocks.input_hook_backward(l, g_x, rep.ln2_scale_layer_pos[l, c], transcoder.cfg.input_hook)
        here = seeds.layer == l
        g[here] += seeds.vec_d[here]
        post = None if rep.ln1_post_scale_layer_pos is None else rep.ln1_post_scale_layer_pos[l, c]
        readout[:, l] = head_readout(blocks, l, g, post)
        diag_t_h = rep.patterns[l][:, c, c].T  # [T, H]: each head's attention to its own position
        per_head = head_value_backward(blocks, l, readout[:, l] * diag_t_h[:, :, None], rep.ln1_scale_layer_pos[l, c])
        g = g + per_head.sum(1)
    return SameBackward(readout, mlp_out, g)


@dataclass
class SourceWrites:
    """What S sources write: a position each, vectors at MLP output hooks [S, L, d] (zero where a
    source does not write) and at the embeddings [S, d]."""

    position: torch.Tensor  # [S]
    mlp_s_l_d: torch.Tensor
    embed_s_d: torch.Tensor


def source_writes(rep: LocalReplacement, layout: SourceLayout, columns: torch.Tensor) -> SourceWrites:
    """The writes of sources given by their columns in `layout` (features, errors, embeddings)."""
    f = rep.features
    L, d = layout.n_layers, rep.embed_pos_d.shape[1]
    device = rep.embed_pos_d.device
    S = len(columns)
    position = torch.zeros(S, dtype=torch.long, device=device)
    mlp = torch.zeros(S, L, d, device=device)
    embed = torch.zeros(S, d, device=device)
    for i, col in enumerate(columns.tolist()):
        if col < layout.n_features:
            l_s = int(f.layer[col])
            dec = layout.scaled_decoders(l_s, col, col + 1)[0]  # [n_out, d]
            n_out = min(dec.shape[0], L - l_s)
            mlp[i, l_s:l_s + n_out] = dec[:n_out]
            position[i] = f.position[col]
        elif col < layout.n_features + layout.n_errors:
            l_s, p = divmod(col - layout.n_features, layout.n_pos - 1)
            mlp[i, l_s] = rep.error_layer_pos_d[l_s, p + 1]
            position[i] = p + 1
        else:
            p = col - layout.n_features - layout.n_errors
            embed[i] = rep.embed_pos_d[p]
            position[i] = p
    return SourceWrites(position, mlp, embed)


def input_hook_forward(blocks: FrozenBlocks, layer: int, x_pos_d: torch.Tensor, scale_pos: torch.Tensor,
                       input_hook: str) -> torch.Tensor:
    """resid_mid -> what the transcoder reads (linear part); the transpose of input_hook_backward."""
    if input_hook == "hook_resid_mid" or not blocks.has_norm:
        return x_pos_d
    weight = blocks.ln2_w[layer] if input_hook == "hook_mlp_in" else None
    return norm_forward(x_pos_d, scale_pos, weight, blocks.centered)


def output_hook_forward(blocks: FrozenBlocks, layer: int, y_pos_d: torch.Tensor,
                        ln2_post_scale_pos: torch.Tensor | None) -> torch.Tensor:
    if ln2_post_scale_pos is None:
        return y_pos_d
    return norm_forward(y_pos_d, ln2_post_scale_pos, blocks.ln2_post_w[layer], blocks.centered)


def residual_contributions(rep: LocalReplacement, blocks: FrozenBlocks, transcoder, writes: SourceWrites,
                           n_pos: int, until_layer: int, at_layer=None):
    """Propagate S sources up the frozen linear model: each source's contribution u [S, P, d] to
    resid_pre of blocks 0 .. until_layer. `at_layer(l, u, values)` is called at each block l with u
    at its resid_pre and the per-head value vectors [S, H, P, e]; returns u at resid_pre(until_layer)."""
    S, d = writes.mlp_s_l_d.shape[0], writes.mlp_s_l_d.shape[2]
    P = n_pos
    device = writes.mlp_s_l_d.device
    u = torch.zeros(S, P, d, device=device)
    at_pos = writes.position < P
    u[at_pos.nonzero(as_tuple=True)[0], writes.position[at_pos]] = writes.embed_s_d[at_pos]
    src = at_pos.nonzero(as_tuple=True)[0]
    post_mlp = rep.ln2_post_scale_layer_pos
    for l in range(until_layer):
        values = head_values(blocks, l, u, rep.ln1_scale_layer_pos[l, :P])
        if at_layer is not None:
            at_layer(l, u, values)
        post = None if rep.ln1_post_scale_layer_pos is None else rep.ln1_post_scale_layer_pos[l, :P]
        u = u + attention_forward(blocks, l, values, rep.patterns[l][:, :P, :P], post)
        y = torch.zeros_like(u)
        if transcoder.cfg.skip:
            x = input_hook_forward(blocks, l, u, rep.ln2_scale_layer_pos[l, :P], transcoder.cfg.input_hook)
            y = x @ transcoder.skip_matrix(l).float().to(device)  # the skip path is live at BOS
        y[src, writes.position[src]] += writes.mlp_s_l_d[src, l]
        u = u + output_hook_forward(blocks, l, y, None if post_mlp is None else post_mlp[l, :P])
    return u


@dataclass
class EdgeLoadings:
    """Head loadings of E edges: loadings [E, L, H] and the same-position remainder [E]; their sum
    over (L, H) plus the remainder is the edge."""

    loadings_e_l_h: torch.Tensor
    remainder_e: torch.Tensor


@torch.no_grad()
def head_loadings(rep: LocalReplacement, blocks: FrozenBlocks, transcoder, layout: SourceLayout,
                  seeds: TargetSeeds, source_columns: torch.Tensor, edge_target: torch.Tensor,
                  edge_source: torch.Tensor) -> EdgeLoadings:
    """Loadings of the edges (seeds[edge_target[i]] <- source_columns[edge_source[i]])."""
    same = same_position_backward(rep, blocks, transcoder, seeds)
    writes = source_writes(rep, layout, source_columns)
    L, H = blocks.n_layers, blocks.W_O_head_e_d[0].shape[0]
    E = len(edge_target)
    device = rep.embed_pos_d.device
    c_t = seeds.position[edge_target]
    loadings = torch.zeros(E, L, H, device=device)
    P = int(seeds.position.max()) + 1
    top = min(int(seeds.layer.max()) + 1, L)

    def at_layer(l, u, values_s_h_p_e):
        pattern = rep.patterns[l][:, :P, :P]
        off = pattern - torch.diag_embed(pattern.diagonal(dim1=1, dim2=2))  # cross-position entries
        z_s_h_q_e = torch.einsum("hqk,shke->shqe", off, values_s_h_p_e)  # each head's output, moved
        for start in range(0, E, 16384):
            sl = slice(start, start + 16384)
            z_n_h_e = z_s_h_q_e[edge_source[sl], :, c_t[sl]]
            loadings[sl, l] = (z_n_h_e * same.readout_t_l_h_e[edge_target[sl], l]).sum(-1)

    residual_contributions(rep, blocks, transcoder, writes, P, top, at_layer)
    same_pos = (writes.position[edge_source] == c_t).nonzero(as_tuple=True)[0]
    remainder = torch.zeros(E, device=device)
    for start in range(0, len(same_pos), 1024):  # [n, L, d] gathers, in chunks (edges can be many)
        idx = same_pos[start:start + 1024]
        t, s = edge_target[idx], edge_source[idx]
        remainder[idx] = (same.mlp_out_t_l_d[t] * writes.mlp_s_l_d[s]).sum((1, 2)) + \
            (same.embed_t_d[t] * writes.embed_s_d[s]).sum(-1)
    return EdgeLoadings(loadings, remainder)


__all__ = ["EdgeLoadings", "head_loadings", "post_attention_backward", "residual_contributions",
           "same_position_backward", "source_writes"]
