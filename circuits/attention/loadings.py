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

from circuits.attention.heads import (head_readout, head_value_backward, heads_output, kv_values, mix_positions,
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


def source_positions(rep: LocalReplacement, layout: SourceLayout, columns: torch.Tensor) -> torch.Tensor:
    """The position [S] (CPU) of each source column (features, errors, embeddings)."""
    columns = columns.cpu()
    pos = torch.empty(len(columns), dtype=torch.long)
    n_f, n_fe = layout.n_features, layout.n_features + layout.n_errors
    feat, err, emb = columns < n_f, (columns >= n_f) & (columns < n_fe), columns >= n_fe
    pos[feat] = rep.features.position.cpu()[columns[feat]]
    pos[err] = (columns[err] - n_f) % (layout.n_pos - 1) + 1
    pos[emb] = columns[emb] - n_fe
    return pos


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


def pattern_window(rep: LocalReplacement, layer: int, start: int, stop: int) -> torch.Tensor:
    """Block `layer`'s frozen pattern [H, stop - start, stop - start] over queries and keys in
    [start, stop), built from its causal blocks (no full [H, P, P] of a long prompt)."""
    out = None
    for q0, block in rep.patterns.blocks(layer, stop):
        q1 = q0 + block.shape[1]
        if q1 <= start:
            continue
        if out is None:
            H = block.shape[0]
            out = torch.zeros(H, stop - start, stop - start, device=block.device)
        lo = max(q0, start)
        out[:, lo - start:q1 - start, :block.shape[2] - start] = block[:, lo - q0:, start:]
    return out


def residual_contributions(rep: LocalReplacement, blocks: FrozenBlocks, transcoder, writes: SourceWrites,
                           n_pos: int, until_layer: int, at_layer=None, start: int = 0):
    """Propagate S sources up the frozen linear model: each source's contribution u [S, P', d] to
    resid_pre of blocks 0 .. until_layer at positions start .. n_pos - 1 (P' of them: every source
    writes at or after `start`, and attention is causal, so nothing reaches earlier positions).
    `at_layer(l, u, values, z)` is called at each block l with u at its resid_pre, the value
    vectors per value head [S, G, P', e] and each head's output z [S, H, P', e]; returns u at
    resid_pre(until_layer)."""
    S, d = writes.mlp_s_l_d.shape[0], writes.mlp_s_l_d.shape[2]
    P = n_pos
    device = writes.mlp_s_l_d.device
    at_pos = (writes.position < P).nonzero(as_tuple=True)[0]
    if len(at_pos) and int(writes.position[at_pos].min()) < start:
        raise ValueError("a source writes before the window's start")
    u = torch.zeros(S, P - start, d, device=device)
    pos = writes.position[at_pos] - start
    u[at_pos, pos] = writes.embed_s_d[at_pos]
    post_mlp = rep.ln2_post_scale_layer_pos
    for l in range(until_layer):
        values = kv_values(blocks, l, u, rep.ln1_scale_layer_pos[l, start:P])
        z = mix_positions(pattern_window(rep, l, start, P), values)
        if at_layer is not None:
            at_layer(l, u, values, z)
        post = None if rep.ln1_post_scale_layer_pos is None else rep.ln1_post_scale_layer_pos[l, start:P]
        u = u + heads_output(blocks, l, z, post)
        del values, z
        if transcoder.cfg.skip:
            x = input_hook_forward(blocks, l, u, rep.ln2_scale_layer_pos[l, start:P], transcoder.cfg.input_hook)
            y = x @ transcoder.skip_matrix(l).float().to(device)  # the skip path is live at BOS
        else:
            y = torch.zeros_like(u)
        y[at_pos, pos] += writes.mlp_s_l_d[at_pos, l]
        u = u + output_hook_forward(blocks, l, y, None if post_mlp is None else post_mlp[l, start:P])
    return u


@dataclass
class EdgeLoadings:
    """Head loadings of E edges: loadings [E, L, H] and the same-position remainder [E]; their sum
    over (L, H) plus the remainder is the edge."""

    loadings_e_l_h: torch.Tensor
    remainder_e: torch.Tensor


SOURCE_CHUNK = 256  # sources propagated together (sorted by position: a chunk starts at its first)


@torch.no_grad()
def head_loadings(rep: LocalReplacement, blocks: FrozenBlocks, transcoder, layout: SourceLayout,
                  seeds: TargetSeeds, source_columns: torch.Tensor, edge_target: torch.Tensor,
                  edge_source: torch.Tensor) -> EdgeLoadings:
    """Loadings of the edges (seeds[edge_target[i]] <- source_columns[edge_source[i]]).

    Sources go up the frozen model in chunks of SOURCE_CHUNK, sorted by position, each chunk only
    over the positions from its first source's on (the rest of its contribution is zero)."""
    same = same_position_backward(rep, blocks, transcoder, seeds)
    L, H = blocks.n_layers, blocks.W_O_head_e_d[0].shape[0]
    G = blocks.W_V_kv_d_e[0].shape[0]
    kv_of_head = torch.arange(H) // (H // G)
    E = len(edge_target)
    device = rep.embed_pos_d.device
    c_t = seeds.position[edge_target]
    loadings = torch.zeros(E, L, H, device=device)
    remainder = torch.zeros(E, device=device)
    P = int(seeds.position.max()) + 1
    top = min(int(seeds.layer.max()) + 1, L)
    src_pos = source_positions(rep, layout, source_columns)
    order = torch.argsort(src_pos, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    edge_chunk = rank[edge_source.cpu()] // SOURCE_CHUNK
    for chunk, c0 in enumerate(range(0, len(order), SOURCE_CHUNK)):
        mine = order[c0:c0 + SOURCE_CHUNK]
        start = int(src_pos[mine[0]])
        edges = (edge_chunk == chunk).nonzero(as_tuple=True)[0].to(device)
        if start >= P or not len(edges):
            continue
        writes = source_writes(rep, layout, source_columns[mine])
        local = (rank[edge_source[edges].cpu()] - c0).to(device)  # the edge's source within the chunk
        q = c_t[edges] - start  # the target's position in the window (>= 0 for a nonzero edge)
        live = (q >= 0).nonzero(as_tuple=True)[0]
        edges, local, q = edges[live], local[live], q[live]
        t = edge_target[edges]

        def at_layer(l, u, values_s_g_p_e, z_s_h_q_e, edges=edges, local=local, q=q, t=t, start=start):
            diag_h_q = pattern_window(rep, l, start, P).diagonal(dim1=1, dim2=2)  # self-attention weights
            for e0 in range(0, len(edges), 16384):
                sl = slice(e0, e0 + 16384)
                s_n, q_n = local[sl], q[sl]
                moved = z_s_h_q_e[s_n, :, q_n] - diag_h_q[:, q_n].T[..., None] * \
                    values_s_g_p_e[s_n[:, None], kv_of_head[None, :].to(device), q_n[:, None]]
                loadings[edges[sl], l] = (moved * same.readout_t_l_h_e[t[sl], l]).sum(-1)

        residual_contributions(rep, blocks, transcoder, writes, P, top, at_layer, start)
        same_pos = (writes.position[local] == c_t[edges]).nonzero(as_tuple=True)[0]
        for s0 in range(0, len(same_pos), 1024):  # [n, L, d] gathers, in chunks (edges can be many)
            idx = same_pos[s0:s0 + 1024]
            ti, si = t[idx], local[idx]
            remainder[edges[idx]] = (same.mlp_out_t_l_d[ti] * writes.mlp_s_l_d[si]).sum((1, 2)) + \
                (same.embed_t_d[ti] * writes.embed_s_d[si]).sum(-1)
    return EdgeLoadings(loadings, remainder)


__all__ = ["EdgeLoadings", "head_loadings", "post_attention_backward", "residual_contributions",
           "same_position_backward", "source_writes"]
