"""The former all-nodes-square computation, kept as the reference the targets x sources storage
must reproduce: A is the dense [n_nodes, n_nodes] square, A_hat and every influence are built on
it (zero rows for error and embedding nodes, zero columns for logits included), exactly as
graphs.prune and graphs.scores computed them before the graph stopped holding the square."""

from __future__ import annotations

import numpy as np
from scipy import sparse

from graphs.graph import Graph, NodeKind
from graphs.prune import FLOAT64_MAX_NODES, keep_top_share, max_path_length


def square_a_hat(adjacency: np.ndarray) -> np.ndarray:
    n = adjacency.shape[0]
    dtype = np.float64 if n <= FLOAT64_MAX_NODES else np.float32
    a_hat = np.abs(adjacency, dtype=dtype)
    row_sum = a_hat.sum(axis=1, dtype=np.float64)
    inverse = np.zeros_like(row_sum)
    np.divide(1.0, row_sum, out=inverse, where=row_sum > 0)
    a_hat *= inverse.astype(dtype)[:, None]
    return a_hat


def square_influence(a_hat, w_node: np.ndarray, max_steps: int) -> np.ndarray:
    dtype = np.float64 if sparse.issparse(a_hat) else a_hat.dtype
    x = np.asarray(w_node, dtype=dtype)
    total = np.zeros(x.shape[0], dtype=np.float64)
    for _ in range(max_steps + 1):
        x = a_hat.T @ x if sparse.issparse(a_hat) else x @ a_hat
        if not x.any():
            return total
        total += x
    raise AssertionError("no convergence")


def square_prune(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> dict:
    """{influence, node_mask, node_mask_by_influence, targets, sources} on the dense square."""
    adjacency = graph.dense_adjacency()
    w_node = graph.logit_weight_vector()
    influence = square_influence(square_a_hat(adjacency), w_node, max_path_length(graph))
    inner = (graph.kind == NodeKind.FEATURE) | (graph.kind == NodeKind.ERROR)
    step1 = ~inner
    step1[inner] = keep_top_share(influence[inner], node_threshold)
    kept_idx = np.flatnonzero(step1)
    a_hat_sub = square_a_hat(adjacency[np.ix_(kept_idx, kept_idx)])
    w_sub = w_node[kept_idx]
    influence_sub = square_influence(a_hat_sub, w_sub, max_path_length(graph))
    score = a_hat_sub * (influence_sub + w_sub)[:, None].astype(a_hat_sub.dtype)
    t_sub, s_sub = np.nonzero(keep_top_share(score, edge_threshold))
    kind_sub = graph.kind[kept_idx]
    alive = np.ones(kept_idx.shape[0], dtype=bool)
    while True:  # drop dangling nodes, as graphs.prune step 3
        live = alive[t_sub] & alive[s_sub]
        has_out = np.bincount(s_sub[live], minlength=alive.shape[0]) > 0
        has_in = np.bincount(t_sub[live], minlength=alive.shape[0]) > 0
        new = alive & (has_out | (kind_sub == NodeKind.LOGIT)) & (has_in | (kind_sub != NodeKind.FEATURE))
        if np.array_equal(new, alive):
            break
        alive = new
    node_mask = np.zeros(graph.n_nodes, dtype=bool)
    node_mask[kept_idx[alive]] = True
    live = alive[t_sub] & alive[s_sub]
    return {"influence": influence, "node_mask": node_mask, "node_mask_by_influence": step1,
            "targets": kept_idx[t_sub[live]], "sources": kept_idx[s_sub[live]],
            "n_edges": int(np.count_nonzero(adjacency))}


def square_scores(graph: Graph, pruned: dict) -> dict:
    """Replacement and completeness (full and pruned) on the dense square."""
    adjacency = graph.dense_adjacency()
    abs_a = np.abs(adjacency)
    abs_row_sum = abs_a.sum(axis=1, dtype=np.float64)
    err_row_sum = abs_a[:, graph.error_slice].sum(axis=1, dtype=np.float64)
    share_err = np.divide(err_row_sum, abs_row_sum, out=np.zeros_like(err_row_sum), where=abs_row_sum > 0)
    w_node = graph.logit_weight_vector()
    influence = pruned["influence"]

    def replacement(infl, remainder):
        tokens = float(infl[graph.embedding_slice].sum())
        unexplained = float(infl[graph.error_slice].sum()) + remainder
        return 1.0 if unexplained <= 0 else tokens / (tokens + unexplained)

    def mean(values, weights):
        return float((values * weights).sum() / weights.sum())

    targets, sources = pruned["targets"], pruned["sources"]
    values = np.abs(adjacency[targets, sources]).astype(np.float64) / abs_row_sum[targets]
    a_hat_p = sparse.csr_array((values, (targets, sources)), shape=(graph.n_nodes,) * 2)
    influence_p = square_influence(a_hat_p, w_node, max_path_length(graph))
    kept, has_inputs = pruned["node_mask"], abs_row_sum > 0
    kept_share = np.bincount(targets, weights=values, minlength=graph.n_nodes)
    nonerr = np.bincount(targets, weights=values * (graph.kind[sources] != NodeKind.ERROR), minlength=graph.n_nodes)
    share_drop = np.where(has_inputs, np.clip(1.0 - kept_share, 0.0, 1.0), 0.0)
    mass = (influence_p + w_node) * kept
    return {"replacement": replacement(influence, 0.0),
            "completeness": mean(1.0 - share_err, influence + w_node),
            "replacement_pruned": replacement(influence_p * kept, float((share_drop * mass).sum())),
            "completeness_pruned": mean(np.where(has_inputs, np.clip(nonerr, 0.0, 1.0), 1.0), mass)}


def assert_same_as_square(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98,
                          rtol: float = 1e-7) -> None:
    """prune_graph and compute_scores on the targets x sources edges equal the square's: the same
    nodes and edges kept, influences and scores within rtol (the sums run in another order)."""
    from graphs import compute_scores, prune_graph

    pruned = prune_graph(graph, node_threshold, edge_threshold)
    ref = square_prune(graph, node_threshold, edge_threshold)
    np.testing.assert_allclose(pruned.node_influence, ref["influence"], rtol=rtol, atol=0)
    np.testing.assert_array_equal(pruned.node_mask_by_influence, ref["node_mask_by_influence"])
    np.testing.assert_array_equal(pruned.node_mask, ref["node_mask"])
    targets, sources = pruned.edges()
    np.testing.assert_array_equal(targets, ref["targets"])
    np.testing.assert_array_equal(sources, ref["sources"])
    assert pruned.n_edges_before == ref["n_edges"]
    scores, ref_scores = compute_scores(graph, pruned), square_scores(graph, ref)
    for key, value in ref_scores.items():
        assert scores[key] is not None
        np.testing.assert_allclose(scores[key], value, rtol=rtol, atol=0, err_msg=key)
