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
pattern entry). Cross-position edges have no remainder; same-position edges have no loadings
(attention is causal: a path that left c_s could never come back to it).

Shapes: T targets, S sources, E edges, L layers, H heads, P positions, d width, e head dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuits.attention.heads import (add_self_attention, head_readout, heads_output, kv_values, mix_positions,
                                      norm_forward, post_attention_backward, value_backward)
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


def pattern_diagonal(rep: LocalReplacement, layer: int) -> torch.Tensor:
    """Block `layer`'s attention of each position to itself [H, P], from its causal blocks."""
    parts = []
    for q0, block in rep.patterns.blocks(layer, rep.n_pos):
        Q = block.shape[1]
        parts.append(block[:, torch.arange(Q), q0 + torch.arange(Q)])
    return torch.cat(parts, 1)


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
        diag_t_h = pattern_diagonal(rep, l)[:, c].T  # [T, H]: each head's attention to its own position
        g = g + value_backward(blocks, l, readout[:, l] * diag_t_h[:, :, None], rep.ln1_scale_layer_pos[l, c])
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


def source_places(rep: LocalReplacement, layout: SourceLayout, columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(position, first layer written) [S] (CPU) of each source column: a feature's layer, an error
    node's layer, 0 for a token embedding."""
    columns = columns.cpu()
    pos, layer = torch.empty(len(columns), dtype=torch.long), torch.zeros(len(columns), dtype=torch.long)
    n_f, n_fe = layout.n_features, layout.n_features + layout.n_errors
    feat, err, emb = columns < n_f, (columns >= n_f) & (columns < n_fe), columns >= n_fe
    pos[feat] = rep.features.position.cpu()[columns[feat]]
    layer[feat] = rep.features.layer.cpu()[columns[feat]]
    pos[err] = (columns[err] - n_f) % (layout.n_pos - 1) + 1
    layer[err] = (columns[err] - n_f) // (layout.n_pos - 1)
    pos[emb] = columns[emb] - n_fe
    return pos, layer


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
                           n_pos: int, until_layer: int, at_layer=None, start: int = 0, first_layer: int = 0,
                           want_u: bool = True):
    """Propagate S sources up the frozen linear model: each source's contribution u [S, P', d] to
    resid_pre of blocks 0 .. until_layer at positions start .. n_pos - 1 (P' of them: every source
    writes at or after `start`, and attention is causal, so nothing reaches earlier positions).
    `at_layer(l, moved)` is called at each block l with each head's output from the other
    positions (its pattern's diagonal left out) [S, P', H, e]; returns u at
    resid_pre(until_layer) (None with want_u=False: the last block's outputs are then not computed).
    `first_layer`: no source writes below it (their u is zero there, no block runs before it); a
    token embedding writes at 0. Block l runs only on the rows up to the last source written below
    it (the later rows are exactly zero there; few when the sources come sorted by their first
    write), and `moved` holds those rows only [n <= S, ...]."""
    S, d = writes.mlp_s_l_d.shape[0], writes.mlp_s_l_d.shape[2]
    P = n_pos
    device = writes.mlp_s_l_d.device
    at_pos = (writes.position < P).nonzero(as_tuple=True)[0]
    if len(at_pos) and int(writes.position[at_pos].min()) < start:
        raise ValueError("a source writes before the window's start")
    if first_layer > 0 and (bool(writes.embed_s_d.any()) or bool(writes.mlp_s_l_d[:, :first_layer].any())):
        raise ValueError("a source writes below the first layer")
    u = torch.zeros(S, P - start, d, device=device)
    pos = writes.position[at_pos] - start
    u[at_pos, pos] = writes.embed_s_d[at_pos]
    live_below = _live_prefix(writes, until_layer)
    post_mlp = rep.ln2_post_scale_layer_pos
    for l in range(first_layer, until_layer):
        n = live_below[l]  # rows n.. are still zero at resid_pre of block l
        values = kv_values(blocks, l, u[:n], rep.ln1_scale_layer_pos[l, start:P])
        window = pattern_window(rep, l, start, P)
        diagonal_h_q = window.diagonal(dim1=1, dim2=2).clone()
        window.diagonal(dim1=1, dim2=2).zero_()
        z = mix_positions(window, values)  # from the other positions only
        if at_layer is not None:
            at_layer(l, z)
        if l == until_layer - 1 and not want_u:
            return None
        z = add_self_attention(z, diagonal_h_q, values)
        post = None if rep.ln1_post_scale_layer_pos is None else rep.ln1_post_scale_layer_pos[l, start:P]
        u[:n] += heads_output(blocks, l, z, post)
        del values, z
        if transcoder.cfg.skip:
            x = input_hook_forward(blocks, l, u[:n], rep.ln2_scale_layer_pos[l, start:P], transcoder.cfg.input_hook)
            u[:n] += output_hook_forward(blocks, l, x @ transcoder.skip_matrix(l).float().to(device),  # live at BOS
                                         None if post_mlp is None else post_mlp[l, start:P])
        # the MLP output's other part is the sources' own writes, one position each: added there only
        w = writes.mlp_s_l_d[at_pos, l]
        u[at_pos, pos] += output_hook_forward(blocks, l, w, None if post_mlp is None else post_mlp[l, start + pos])
    return u


def _live_prefix(writes: SourceWrites, n_layers: int) -> list[int]:
    """For each block l, the n such that sources n.. have not written below it (no token embedding,
    no MLP write at a block < l): their rows are still zero at its resid_pre. Short prefixes when
    the sources come sorted by their first write."""
    S, L = writes.mlp_s_l_d.shape[:2]
    written = writes.mlp_s_l_d.abs().amax(-1) > 0  # [S, L]
    first = torch.where(written.any(1), written.float().argmax(1), torch.full((S,), L, device=written.device))
    first = torch.where(writes.embed_s_d.abs().amax(-1) > 0, torch.full_like(first, -1), first).cpu()
    live_l_s = first[None, :] < torch.arange(n_layers)[:, None]  # [n_layers, S]
    last_live = S - live_l_s.flip(1).int().argmax(1)  # one past the last live source
    return torch.where(live_l_s.any(1), last_live, torch.zeros_like(last_live)).tolist()


@dataclass
class EdgeLoadings:
    """Head loadings of E edges: loadings [E, L, H] and the same-position remainder [E]; their sum
    over (L, H) plus the remainder is the edge."""

    loadings_e_l_h: torch.Tensor
    remainder_e: torch.Tensor


SOURCE_CHUNK = 128  # sources propagated together


@torch.no_grad()
def head_loadings(rep: LocalReplacement, blocks: FrozenBlocks, transcoder, layout: SourceLayout,
                  seeds: TargetSeeds, source_columns: torch.Tensor, edge_target: torch.Tensor,
                  edge_source: torch.Tensor) -> EdgeLoadings:
    """Loadings of the edges (seeds[edge_target[i]] <- source_columns[edge_source[i]]).

    Sources go up the frozen model in chunks of SOURCE_CHUNK, each only over the layers from its
    sources' first write and up to its edges' deepest target, and over the positions from its first
    source's to its edges' last target (the rest of its contribution is zero or unread). At each
    block the loadings of the chunk's cross-position edges with targets at one position are one
    batched product (targets' read-outs x sources' moved head outputs). Same-position edges have
    no loadings (no path leaves a position and comes back to it): their remainders, one product
    per position, are all they need, and a chunk without cross-position edges does not climb."""
    same = same_position_backward(rep, blocks, transcoder, seeds)
    L = blocks.n_layers
    device = rep.embed_pos_d.device
    E = len(edge_target)
    loadings = torch.zeros(E, L, blocks.W_O_head_e_d[0].shape[0], device=device)
    remainder = torch.zeros(E, device=device)
    src_pos, src_layer = source_places(rep, layout, source_columns)
    edge_target_cpu, edge_source_cpu = edge_target.cpu(), edge_source.cpu()
    seed_pos, seed_layer = seeds.position.cpu(), seeds.layer.cpu()
    edge_cross = seed_pos[edge_target_cpu] != src_pos[edge_source_cpu]
    chunks, chunk_of, local_of = _source_chunks(src_pos, src_layer, edge_source_cpu[edge_cross], L)
    edge_chunk = chunk_of[edge_source_cpu]
    by_chunk = torch.argsort(edge_chunk, stable=True)
    bounds = torch.searchsorted(edge_chunk[by_chunk], torch.arange(len(chunks) + 1))
    for chunk, mine in enumerate(chunks):
        edges = by_chunk[bounds[chunk]:bounds[chunk + 1]]
        local = local_of[edge_source_cpu[edges]]  # the edge's source within the chunk
        t_cpu = edge_target_cpu[edges]
        start, first = int(src_pos[mine].min()), int(src_layer[mine].min())
        t_pos = seed_pos[t_cpu]
        writes = source_writes(rep, layout, source_columns[mine])
        cross = edge_cross[edges]
        here = ~cross
        if bool(here.any()):
            _remainders(same, writes, _edges_by_target_position(t_pos[here] - start, edges[here], t_cpu[here],
                                                                local[here], len(mine)), remainder)
        if not bool(cross.any()):  # a chunk of sources whose edges all stay at their position
            continue
        edges, t_cpu, local, t_pos = edges[cross], t_cpu[cross], local[cross], t_pos[cross]
        stop, top = int(t_pos.max()) + 1, min(int(seed_layer[t_cpu].max()) + 1, L)
        groups = _edges_by_target_position(t_pos - start, edges, t_cpu, local, len(mine))
        ordered = torch.cat([g[1] for g in groups]).to(device)  # the chunk's cross edges, by target position
        chunk_loads = torch.zeros(L, len(ordered), loadings.shape[2], device=device)
        at_layer = _loadings_at_layer(blocks, same, chunk_loads, groups, len(mine))
        residual_contributions(rep, blocks, transcoder, writes, stop, top, at_layer, start, first, want_u=False)
        loadings[ordered] = chunk_loads.transpose(0, 1)
        del chunk_loads
    return EdgeLoadings(loadings, remainder)


def _source_chunks(src_pos: torch.Tensor, src_layer: torch.Tensor, cross_sources: torch.Tensor, n_layers: int):
    """Chunks of at most SOURCE_CHUNK sources (CPU index tensors), the sources with a
    cross-position edge first (only they climb), each group sorted by (position, first layer): a
    chunk climbs from its first source's layer over the positions from its first source's; on a
    16-token SmolLM2 graph this order climbs 1.20x the blocks x positions the sources need one by
    one, against 1.31x sorted by (first layer // 4, position). Inside a chunk the sources go by
    first layer, so residual_contributions skips the rows still zero at each block. Also returns
    each source's chunk and place in it [S]."""
    S = len(src_pos)
    climbs = torch.zeros(S, dtype=torch.bool)
    climbs[cross_sources] = True
    key = src_pos * (n_layers + 1) + src_layer
    chunks = []
    for group in (climbs, ~climbs):
        idx = group.nonzero(as_tuple=True)[0]
        for c in idx[torch.argsort(key[idx], stable=True)].split(SOURCE_CHUNK):
            if len(c):  # within a chunk, by first layer: the sources live at a block are a prefix
                chunks.append(c[torch.argsort(src_layer[c], stable=True)])
    chunk_of, local_of = torch.empty(S, dtype=torch.long), torch.empty(S, dtype=torch.long)
    for c, members in enumerate(chunks):
        chunk_of[members] = c
        local_of[members] = torch.arange(len(members))
    return chunks, chunk_of, local_of


def _edges_by_target_position(q: torch.Tensor, edges: torch.Tensor, t: torch.Tensor, local: torch.Tensor,
                              n_sources: int) -> list:
    """[(q, edges, unique targets, each edge's target among them, its source in the chunk, its
    (target, source) entry in their flat product)], one per window position q >= 0 of the targets
    (an earlier target has no edge from these sources)."""
    groups = []
    for qv in q.unique().tolist():
        if qv < 0:
            continue
        sel = (q == qv).nonzero(as_tuple=True)[0]
        targets, t_loc = t[sel].unique(return_inverse=True)
        groups.append((qv, edges[sel], targets, t_loc, local[sel], t_loc * n_sources + local[sel]))
    return groups


def _loadings_at_layer(blocks, same: SameBackward, chunk_loads, groups, n_sources: int):
    """The callback filling chunk_loads [L, n, H] (the chunk's edges in group order) at each block."""
    H = blocks.W_O_head_e_d[0].shape[0]
    device = chunk_loads.device
    groups = [(q, targets.to(device), flat.to(device)) for q, _, targets, _, _, flat in groups]

    def at_layer(l, moved_s_q_h_e):  # residual_contributions' callback
        read_t_h_e = same.readout_t_l_h_e[:, l]
        out = []
        n = moved_s_q_h_e.shape[0]  # the sources live at this block (a prefix; the rest carry nothing)
        if n == 0:
            return
        for q, targets, flat in groups:  # read-outs x moved outputs of every (target, source) pair at q
            m_h_t_s = torch.bmm(read_t_h_e[targets].transpose(0, 1), moved_s_q_h_e[:, q].permute(1, 2, 0))
            if n < n_sources:
                m_h_t_s = torch.nn.functional.pad(m_h_t_s, (0, n_sources - n))
            out.append(m_h_t_s.reshape(H, -1)[:, flat])
        chunk_loads[l] = torch.cat(out, 1).T
    return at_layer


def _remainders(same: SameBackward, writes: SourceWrites, groups, remainder: torch.Tensor) -> None:
    """The remainders of the chunk's same-position edges (`groups`: those edges only, by position)."""
    for _, edges, targets, t_loc, s_loc, _ in groups:
        sources, s_idx = s_loc.unique(return_inverse=True)
        sources_d = sources.to(writes.position.device)
        layers = writes.mlp_s_l_d[sources_d].abs().sum((0, 2)).nonzero(as_tuple=True)[0]  # layers they write
        lo, hi = (int(layers[0]), int(layers[-1]) + 1) if len(layers) else (0, 0)
        tg = targets.to(remainder.device)
        m = same.mlp_out_t_l_d[tg, lo:hi].reshape(len(tg), -1) @ writes.mlp_s_l_d[sources_d, lo:hi].reshape(len(sources), -1).T
        m = m + same.embed_t_d[tg] @ writes.embed_s_d[sources_d].T
        remainder[edges.to(remainder.device)] = m[t_loc, s_idx]


__all__ = ["EdgeLoadings", "head_loadings", "post_attention_backward", "residual_contributions",
           "same_position_backward", "source_places", "source_writes"]
