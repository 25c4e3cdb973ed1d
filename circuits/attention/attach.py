"""Attach attention explanations to a pruned graph (`circuits trace --qk`, TraceConfig.qk).

1. Head loadings of every kept cross-position edge of the pruned graph (circuits.attention.loadings;
   a same-position edge has none: all of it stays at its position).
2. The `qk_heads` heads carrying the most |loading| of the kept cross-position edges; for each,
   the (query, key) position pair where it carries most (its key moved to one it attends to if
   the pattern is zero there: a multi-hop path), and its QK attribution there
   (circuits.attention.qk), reduced to the top pairs and marginals a viewer shows.
The local replacement model is the trace's own (trace_prompt hands it over), or rebuilt from the
graph's tokens (one forward pass) when the caller has none.
"""

from __future__ import annotations

import numpy as np
import torch

from circuits.attention.loadings import head_loadings
from circuits.attention.qk import QKAttribution, constant_qk, model_qk, qk_attributions
from circuits.attribution.frozen_backward import FrozenBlocks
from circuits.attribution.rows import SourceLayout
from circuits.attribution.targets import TargetSeeds, feature_seeds
from circuits.replacement.local import LocalReplacement, build_local_replacement
from graphs import Graph, PrunedGraph
from graphs.attention import AttentionData, HeadLoadings, HeadQK
from graphs.graph import NodeKind
from graphs.neuronpedia import feature_json_index
from transcoders.threads import free_core_threads

TOP_PAIRS = 20
TOP_MARGINALS = 20
PAIR_CANDIDATES = 48  # per side: top pairs are searched among the nodes with the largest marginals


def node_columns(graph: Graph, rep: LocalReplacement, layout: SourceLayout, nodes: np.ndarray) -> torch.Tensor:
    """Source columns (SourceLayout order) of graph source nodes."""
    f = rep.features
    index = {(int(l), int(c), int(i)): j for j, (l, c, i) in
             enumerate(zip(f.layer.tolist(), f.position.tolist(), f.feature.tolist()))}
    cols = []
    for n in nodes.tolist():
        kind, l, c = NodeKind(int(graph.kind[n])), int(graph.layer[n]), int(graph.position[n])
        if kind is NodeKind.FEATURE:
            cols.append(index[(l, c, int(graph.feature[n]))])
        elif kind is NodeKind.ERROR:
            cols.append(layout.error_column(l, c))
        else:
            cols.append(layout.embedding_column(c))
    return torch.tensor(cols, dtype=torch.long)


def graph_target_seeds(graph: Graph, model, transcoder, rep: LocalReplacement, blocks: FrozenBlocks,
                       nodes: np.ndarray, custom_directions: list[torch.Tensor]) -> TargetSeeds:
    """Seeds of graph target nodes (features, logits; custom targets take `custom_directions`, in
    the order the graph lists its custom logit nodes)."""
    f = rep.features
    index = {(int(l), int(c), int(i)): j for j, (l, c, i) in
             enumerate(zip(f.layer.tolist(), f.position.tolist(), f.feature.tolist()))}
    L, d = blocks.n_layers, rep.embed_pos_d.shape[1]
    layer = torch.empty(len(nodes), dtype=torch.long)
    position = torch.empty(len(nodes), dtype=torch.long)
    vec = torch.empty(len(nodes), d)
    W_U = blocks.W_U_d_vocab
    customs = [int(i) for i in np.flatnonzero(graph.kind == NodeKind.LOGIT) if graph.token_id[i] < 0]
    is_feature = graph.kind[nodes] == NodeKind.FEATURE
    if is_feature.any():
        rows = torch.as_tensor(np.flatnonzero(is_feature))
        idx = torch.tensor([index[(int(graph.layer[n]), int(graph.position[n]), int(graph.feature[n]))]
                            for n in nodes[is_feature].tolist()])
        seed = feature_seeds(rep, blocks, transcoder, idx)
        layer[rows], position[rows], vec[rows] = seed.layer.cpu(), seed.position.cpu(), seed.vec_d.cpu()
    for r, n in enumerate(nodes.tolist()):
        if graph.kind[n] == NodeKind.FEATURE:
            continue
        else:
            t = int(graph.token_id[n])
            direction = W_U[:, t] - W_U.mean(1) if t >= 0 else custom_directions[customs.index(n)].float()
            layer[r], position[r] = L, rep.n_pos - 1
            vec[r] = blocks.final_norm_backward(direction[None], rep.lnf_scale_pos[-1])[0]
    return TargetSeeds(layer, position, vec)


@torch.no_grad()
def edge_loadings(graph: Graph, model, transcoder, rep: LocalReplacement, blocks: FrozenBlocks,
                  layout: SourceLayout, targets: np.ndarray, sources: np.ndarray,
                  custom_directions: list[torch.Tensor]) -> HeadLoadings:
    """Head loadings of the cross-position graph edges among (targets[i] <- sources[i]), node
    indices (a same-position edge has no loadings and is left out)."""
    cross = graph.position[targets] != graph.position[sources]
    targets, sources = targets[cross], sources[cross]
    if not len(targets):
        shape = (0, model.cfg.n_layers, model.cfg.n_heads)
        return HeadLoadings(targets, sources, np.zeros(shape, np.float32), np.zeros(0, np.float32))
    unique_t, t_idx = np.unique(targets, return_inverse=True)
    unique_s, s_idx = np.unique(sources, return_inverse=True)
    seeds = graph_target_seeds(graph, model, transcoder, rep, blocks, unique_t, custom_directions)
    cols = node_columns(graph, rep, layout, unique_s)
    loads = head_loadings(rep, blocks, transcoder, layout, seeds, cols, torch.as_tensor(t_idx),
                          torch.as_tensor(s_idx))
    return HeadLoadings(targets, sources, loads.loadings_e_l_h.numpy(), loads.remainder_e.numpy())


def choose_heads(graph: Graph, loadings: HeadLoadings, rep: LocalReplacement, n_heads: int) -> list[tuple]:
    """(layer, head, query, key, carried) of the heads carrying the most |loading| of the
    cross-position edges."""
    cross = graph.position[loadings.target] != graph.position[loadings.source]
    if not cross.any():
        return []
    totals = loadings.head_totals(cross)
    order = np.argsort(-totals.reshape(-1), kind="stable")[:n_heads]
    H = totals.shape[1]
    out = []
    q_of, k_of = graph.position[loadings.target][cross], graph.position[loadings.source][cross]
    pair_of = q_of.astype(np.int64) * graph.n_pos + k_of  # (query, key) of each cross-position edge
    cross_idx = np.flatnonzero(cross)
    for j in order.tolist():
        layer, head = divmod(j, H)
        if totals[layer, head] <= 0:
            break
        carried_e = np.abs(loadings.loadings[cross_idx, layer, head]).astype(np.float64)
        mass = np.bincount(pair_of, weights=carried_e, minlength=graph.n_pos * graph.n_pos)
        q, k = divmod(int(np.argmax(mass)), graph.n_pos)  # the first (query, key) pair of the largest mass
        pattern = rep.patterns[layer][head, q]
        if float(pattern[k]) == 0:  # the head moved it from elsewhere (a multi-hop path)
            off = pattern.clone()
            off[q] = -1
            k = int(off.argmax())
        out.append((layer, head, q, k, float(totals[layer, head])))
    return out


def column_descriptor(rep: LocalReplacement, layout: SourceLayout, col: int, token_strs: list[str],
                      labels: dict[tuple[int, int], str]) -> tuple[str, dict]:
    """(node id, descriptor) of a source column, with Graph.node_id's id format."""
    f = rep.features
    if col < layout.n_features:
        l, c, i = int(f.layer[col]), int(f.position[col]), int(f.feature[col])
        return f"{l}_{i}_{c}", {"feature_type": "cross layer transcoder", "layer": str(l), "ctx_idx": c,
                                "feature": feature_json_index(l, i), "jsNodeId": f"{l}_{i}-0",
                                "clerp": labels.get((l, i), ""), "activation": float(f.activation[col])}
    if col < layout.n_features + layout.n_errors:
        l, p = divmod(col - layout.n_features, layout.n_pos - 1)
        c = p + 1
        return f"{l}_-1_{c}", {"feature_type": "mlp reconstruction error", "layer": str(l), "ctx_idx": c,
                               "feature": -1, "jsNodeId": f"{l}_-1-{c}", "clerp": f"error L{l} @{c}",
                               "activation": None}
    c = col - layout.n_features - layout.n_errors
    t = int(rep.tokens[c])
    return f"E_{t}_{c}", {"feature_type": "embedding", "layer": "E", "ctx_idx": c, "feature": c,
                          "jsNodeId": f"E_{t}-{c}", "clerp": token_strs[c], "activation": None}


def _bias_descriptor(a: QKAttribution, side: str) -> tuple[str, dict]:
    pos = a.query if side == "q" else a.key
    node_id = f"bias_{side}_L{a.layer}H{a.head}_{pos}"
    return node_id, {"feature_type": "bias", "layer": str(a.layer), "ctx_idx": pos, "feature": None,
                     "jsNodeId": node_id, "clerp": f"{'query' if side == 'q' else 'key'} constant: biases, "
                     "position terms, BOS", "activation": None}


def summarize_qk(a: QKAttribution, rep: LocalReplacement, layout: SourceLayout, token_strs: list[str],
                 labels: dict[tuple[int, int], str], carried: float = 0.0, top_pairs: int = TOP_PAIRS,
                 top_marginals: int = TOP_MARGINALS, candidates: int = PAIR_CANDIDATES) -> HeadQK:
    """The top pairs and marginals of a QK attribution, with ids (bias pseudo-nodes included)."""
    q_marg, k_marg = a.q_marginals(), a.k_marginals()
    nodes: dict[str, dict] = {}

    def name(col: int, side: str) -> str:
        node_id, desc = _bias_descriptor(a, side) if col < 0 else column_descriptor(rep, layout, col, token_strs, labels)
        nodes[node_id] = {"node_id": node_id, **desc}
        return node_id

    def top(marg: torch.Tensor, bias: float, n: int) -> list[tuple[int, float]]:
        vals = torch.cat([marg, torch.tensor([bias])])
        top_vals, top_idx = vals.abs().topk(min(n, len(vals)))
        values = vals[top_idx].tolist()
        return [(-1 if i == len(marg) else i, v) for i, v, a in zip(top_idx.tolist(), values, top_vals.tolist()) if a > 0]

    q_top = top(q_marg, a.q_bias_marginal(), top_marginals)
    k_top = top(k_marg, a.k_bias_marginal(), top_marginals)
    q_cand = [c for c, _ in top(q_marg, a.q_bias_marginal(), candidates)]
    k_cand = [c for c, _ in top(k_marg, a.k_bias_marginal(), candidates)]
    q_vecs = torch.stack([a.q_bias_e if c < 0 else a.q_nodes_e_n[:, c] for c in q_cand], 1) if q_cand else None
    k_vecs = torch.stack([a.k_bias_e if c < 0 else a.k_nodes_e_n[:, c] for c in k_cand], 1) if k_cand else None
    pairs = []
    if q_vecs is not None and k_vecs is not None:
        matrix = q_vecs.T @ k_vecs / a.attn_scale
        flat = matrix.reshape(-1)
        for j in flat.abs().topk(min(top_pairs, len(flat))).indices.tolist():
            qi, ki = divmod(j, matrix.shape[1])
            pairs.append([name(q_cand[qi], "q"), name(k_cand[ki], "k"), float(flat[j])])
    return HeadQK(a.layer, a.head, a.query, a.key, a.score(), a.model_score,
                  float(rep.patterns[a.layer][a.head, a.query, a.key]), carried, pairs,
                  [[name(c, "q"), v] for c, v in q_top], [[name(c, "k"), v] for c, v in k_top],
                  a.remainders(), nodes, a.soft_cap)


@torch.no_grad()
def attach_attention(graph: Graph, pruned: PrunedGraph, model, transcoder, n_heads: int = 8,
                     custom_directions: list[torch.Tensor] | None = None, index=None,
                     rep: LocalReplacement | None = None, layout: SourceLayout | None = None) -> AttentionData:
    """Compute and set graph.attention: loadings of the pruned graph's kept cross-position edges, QK attributions
    of its `n_heads` busiest heads. `index` (a feature index) labels the QK contributors. `rep` /
    `layout`: the local replacement model and source layout the graph was computed on, when the
    caller still holds them (trace_prompt); else rebuilt from the graph's tokens. Runs on as many
    threads as the trace's attribution last used (its measurement of the free cores,
    transcoders.threads), else on the CPU cores free now."""
    threads = (graph.settings or {}).get("threads") or [None]  # the trace's last count: no second measurement
    with free_core_threads(threads[-1]):
        return _attach(graph, pruned, model, transcoder, n_heads, custom_directions, index, rep, layout)


def _attach(graph, pruned, model, transcoder, n_heads, custom_directions, index, rep, layout) -> AttentionData:
    if rep is None:
        rep = build_local_replacement(model, transcoder, torch.tensor(graph.token_ids))
    blocks = FrozenBlocks(model)
    if layout is None:
        layout = SourceLayout(rep, transcoder)
    targets, sources = pruned.edges()
    loadings = edge_loadings(graph, model, transcoder, rep, blocks, layout, np.asarray(targets), np.asarray(sources),
                             custom_directions or [])
    heads = []
    labels = {(int(graph.layer[i]), int(graph.feature[i])): text for i, text in graph.feature_labels.items()}
    chosen = choose_heads(graph, loadings, rep, n_heads)
    layers = sorted({c[0] for c in chosen})
    constants = constant_qk(model, transcoder, rep, layers) if layers else {}
    clean = model_qk(model, rep, layers) if layers else {}
    explained = {}
    for layer in layers:
        mine = [c for c in chosen if c[0] == layer]
        for c, a in zip(mine, qk_attributions(model, transcoder, rep, blocks, layout, layer,
                                              [c[1:4] for c in mine], constants[layer], clean[layer])):
            explained[c] = a
    for c in chosen:  # in order of carried loading
        a = explained[c]
        if index is not None:
            _add_index_labels(labels, a, rep, layout, index)
        heads.append(summarize_qk(a, rep, layout, graph.token_strs, labels, c[4]))
    graph.attention = AttentionData(model.cfg.n_heads, loadings, heads)
    return graph.attention


def _add_index_labels(labels: dict, a: QKAttribution, rep: LocalReplacement, layout: SourceLayout, index) -> None:
    """Labels from the feature index for the features with the largest marginals."""
    f = rep.features
    for marg in (a.q_marginals(), a.k_marginals()):
        for col in marg[:layout.n_features].abs().topk(min(PAIR_CANDIDATES, layout.n_features)).indices.tolist():
            key = (int(f.layer[col]), int(f.feature[col]))
            if key not in labels:
                text = index.label(*key)
                if text:
                    labels[key] = text
