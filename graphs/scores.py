"""Replacement and completeness scores (METHOD.md section 4).

Full graph, with influence_n = (w^T B)_n and share_err(n) = sum_{s error} |A[n,s]| / sum_s |A[n,s]|
(0 for a node with no inputs):
    replacement  = sum_{tokens} influence / sum_{tokens and errors} influence
    completeness = sum_n (1 - share_err(n)) (influence_n + w_n) / sum_n (influence_n + w_n)

Pruned graph: whatever the pruned graph does not show counts as error. Edges keep their
full-graph normalisation, A_hat_p[t, s] = |A[t, s]| / sum_s' |A[t, s']| on kept edges only, so the
share of a kept node's input carried by dropped nodes and edges, share_drop(n) = 1 - sum of its
kept row of A_hat_p, acts like one more error source. With influence_p = w^T (A_hat_p + A_hat_p^2 ...)
over the kept nodes:
    replacement_pruned  = tokens / (tokens + errors + sum_n share_drop(n) (influence_p_n + w_n))
    completeness_pruned = sum_n share_kept_nonerr(n) (influence_p_n + w_n) / sum_n (influence_p_n + w_n)
where share_kept_nonerr(n) = sum of n's kept row of A_hat_p over non-error sources (1 for a node
with no inputs), i.e. 1 - share_err(n) - share_drop(n) with share_err over kept edges.
Keeping every node and edge gives back the full-graph scores exactly (pruning drops feature nodes
without inputs, so this holds when every feature node has inputs, as attributed features do).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from graphs.graph import Graph, NodeKind
from graphs.prune import PrunedGraph, influence_from, max_path_length, node_influence


def compute_scores(graph: Graph, pruned: PrunedGraph | None = None) -> dict[str, float | None]:
    """{replacement, completeness, replacement_pruned, completeness_pruned} (pruned: None if no
    PrunedGraph is given). A graph with no edges has no scores (None): nothing reaches the logits,
    so there is nothing to be complete about (an empty graph must not score 1.0)."""
    abs_row_sum, err_row_sum = _abs_row_sums(graph)  # float64 [n_nodes] each
    share_err = _ratio(err_row_sum, abs_row_sum)  # [n_nodes]
    w_node = graph.logit_weight_vector()
    influence = pruned.node_influence if pruned is not None else node_influence(graph)

    scores: dict[str, float | None] = {
        "replacement": _replacement(graph, influence, remainder=0.0),
        "completeness": _weighted_mean(1.0 - share_err, influence + w_node),
        "replacement_pruned": None,
        "completeness_pruned": None,
    }
    if not abs_row_sum.any():
        return {key: None for key in scores}
    if pruned is not None:
        scores.update(_pruned_scores(graph, pruned, abs_row_sum, w_node))
    return scores


def _pruned_scores(graph: Graph, pruned: PrunedGraph, abs_row_sum: np.ndarray,
                   w_node: np.ndarray) -> dict[str, float]:
    targets, sources = pruned.edges()
    a_hat_values = np.abs(graph.edge_weights(targets, sources)).astype(np.float64) / abs_row_sum[targets]
    a_hat_p = sparse.csr_array((a_hat_values, (targets, sources)), shape=(graph.n_nodes,) * 2)
    influence_p = influence_from(a_hat_p, w_node, max_path_length(graph))

    kept = pruned.node_mask
    has_inputs = abs_row_sum > 0
    from_nonerr = graph.kind[sources] != NodeKind.ERROR
    kept_share = np.bincount(targets, weights=a_hat_values, minlength=graph.n_nodes)
    kept_nonerr_share = np.bincount(targets, weights=a_hat_values * from_nonerr, minlength=graph.n_nodes)
    share_drop = np.where(has_inputs, np.clip(1.0 - kept_share, 0.0, 1.0), 0.0)
    mass = (influence_p + w_node) * kept  # [n_nodes], 0 for dropped nodes
    remainder = float((share_drop * mass).sum())
    complete = np.where(has_inputs, np.clip(kept_nonerr_share, 0.0, 1.0), 1.0)
    return {
        "replacement_pruned": _replacement(graph, influence_p * kept, remainder),
        "completeness_pruned": _weighted_mean(complete, mass),
    }


def _abs_row_sums(graph: Graph, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """float64 [n_nodes] each: sum_s |A[n, s]| and the same over error sources only (0 for nodes
    without inputs), from the targets x sources edges in row blocks (no big temporary)."""
    total = np.zeros(graph.n_nodes, dtype=np.float64)
    errors = np.zeros(graph.n_nodes, dtype=np.float64)
    targets = graph.target_nodes()
    for start in range(0, graph.n_targets, block):
        rows = np.abs(graph.edges[start:start + block])
        nodes = targets[start:start + block]
        total[nodes] = rows.sum(axis=1, dtype=np.float64)
        errors[nodes] = rows[:, graph.error_slice].sum(axis=1, dtype=np.float64)
    return total, errors


def _replacement(graph: Graph, influence: np.ndarray, remainder: float) -> float | None:
    tokens = float(influence[graph.embedding_slice].sum())
    unexplained = float(influence[graph.error_slice].sum()) + remainder
    if tokens + unexplained <= 0:
        return None  # nothing reaches the logits at all: no score
    if unexplained <= 0:
        return 1.0  # nothing reaches the logits through errors
    return tokens / (tokens + unexplained)


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    total = float(weights.sum())
    return float((values * weights).sum() / total) if total > 0 else 1.0


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den > 0)
    return out

