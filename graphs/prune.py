"""Influence and pruning (METHOD.md section 4).

    A_hat = |A| with each row normalised to sum 1 (rows summing to 0 stay 0)
    B     = A_hat + A_hat^2 + ... = (I - A_hat)^-1 - I
    influence = w^T B            (w: logit weights at the logit nodes, 0 elsewhere)

w^T B is computed as w^T A_hat + (w^T A_hat) A_hat + ... : one vector-matrix product per step,
never the n x n inverse. The graph is a DAG whose edges go up in layer, so the series ends
(exactly zero) after at most (number of distinct layers) steps. A_hat is only ever built on the
graph's targets x sources block (Graph.edges): the rows of error and embedding nodes and the
columns of logit nodes of the square are zero, so each step is
    x_sources = x_targets @ A_hat_ts,   x_targets <- x_sources at the feature nodes (0 at logits)
and the result is the square's, summed in another order (float rounding apart).

Pruning:
1. nodes: keep the smallest set of feature and error nodes holding `node_threshold` of their total
   influence (sorted descending; nodes tied with the last one kept are kept too); embeddings and
   logits are always kept at this step;
2. edges: on the kept-node subgraph, recompute A_hat and influence; edge score
   = A_hat[t, s] * (influence_t + w_t); keep the smallest set of edges holding `edge_threshold` of
   the total edge score (ties with the last kept edge kept too);
3. repeatedly drop feature, error and embedding nodes left with no outgoing kept edge and feature
   nodes left with no incoming kept edge (and their edges), until nothing changes. Logits stay.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from graphs.errors import GraphError
from graphs.graph import Graph, NodeKind
from graphs.thresholds import DEFAULT_EDGE_THRESHOLD, DEFAULT_NODE_THRESHOLD, check_threshold

# Up to this many nodes A_hat is built in float64 (<= 134 MB); above it in float32 (a 10k-node
# graph then needs 400 MB for A_hat besides the adjacency itself).
FLOAT64_MAX_NODES = 4096
_SHARE_RTOL = 1e-9  # a cumulative share within rounding of the threshold counts as reaching it


def normalized_abs_adjacency(adjacency: np.ndarray | sparse.sparray,
                             n_nodes: int | None = None) -> np.ndarray | sparse.csr_array:
    """A_hat: |A| with rows scaled to sum 1; all-zero rows stay zero. A is the square [n, n] or
    a graph's targets x sources block; a dense A_hat is float64 when the graph has at most
    FLOAT64_MAX_NODES nodes (n_nodes, default the number of rows), float32 above."""
    if sparse.issparse(adjacency):
        abs_a = abs(sparse.csr_array(adjacency, dtype=np.float64))
        row_sum = np.asarray(abs_a.sum(axis=1)).reshape(-1)
        return sparse.csr_array(sparse.diags_array(_safe_inverse(row_sum)) @ abs_a)
    n = adjacency.shape[0] if n_nodes is None else n_nodes
    dtype = np.float64 if n <= FLOAT64_MAX_NODES else np.float32
    a_hat = np.abs(adjacency, dtype=dtype)
    a_hat *= _safe_inverse(a_hat.sum(axis=1, dtype=np.float64)).astype(dtype)[:, None]
    return a_hat


def _safe_inverse(row_sum: np.ndarray) -> np.ndarray:
    out = np.zeros_like(row_sum, dtype=np.float64)
    np.divide(1.0, row_sum, out=out, where=row_sum > 0)
    return out


def influence_from(a_hat: np.ndarray | sparse.sparray, w_node: np.ndarray, max_steps: int) -> np.ndarray:
    """w^T (A_hat + A_hat^2 + ...) as float64 [n] for a square A_hat [n, n], dense or scipy-sparse."""
    return influence_through(a_hat, w_node, a_hat.shape[0], max_steps)


def influence_through(a_hat_ts: np.ndarray | sparse.sparray, w_targets: np.ndarray, n_shared: int,
                      max_steps: int) -> np.ndarray:
    """w^T (A_hat + A_hat^2 + ...) as float64 [n_sources], for A_hat given as targets x sources
    [n_targets, n_sources] whose first `n_shared` rows are the first `n_shared` sources (the
    feature nodes; a square is the case n_shared = n). w_targets: float [n_targets]."""
    dtype = np.float64 if sparse.issparse(a_hat_ts) else a_hat_ts.dtype
    x_t = np.asarray(w_targets, dtype=dtype)
    total = np.zeros(a_hat_ts.shape[1], dtype=np.float64)
    for _ in range(max_steps + 1):
        x_s = a_hat_ts.T @ x_t if sparse.issparse(a_hat_ts) else x_t @ a_hat_ts
        if not x_s.any():
            return total
        total += x_s
        x_t = np.zeros(a_hat_ts.shape[0], dtype=x_s.dtype)
        x_t[:n_shared] = x_s[:n_shared]
    raise GraphError(f"influence did not converge in {max_steps} steps: the graph has a cycle")


def max_path_length(graph: Graph) -> int:
    """Edges go up in layer, so no path is longer than the number of distinct layers."""
    return int(np.unique(graph.layer).shape[0])


def node_influence(graph: Graph, w_node: np.ndarray | None = None) -> np.ndarray:
    """float64 [n_nodes]: each node's influence w^T B on the targets weighted by w_node (default
    the logit weights: influence on the logits; 0 for nodes without outputs, the logits)."""
    w_node = graph.logit_weight_vector() if w_node is None else np.asarray(w_node)
    a_hat_ts = normalized_abs_adjacency(graph.edges, n_nodes=graph.n_nodes)
    n_features = graph.feature_slice.stop
    influence = np.zeros(graph.n_nodes, dtype=np.float64)
    influence[:graph.n_sources] = influence_through(a_hat_ts, w_node[graph.target_nodes()], n_features,
                                                    max_path_length(graph))
    return influence


def keep_top_share(scores: np.ndarray, threshold: float) -> np.ndarray:
    """bool mask like `scores`: the highest scores whose sum reaches `threshold` of the positive
    total; entries tied with the last one kept are kept too; zero scores never."""
    positive = scores > 0
    if threshold <= 0 or not positive.any():
        return np.zeros(scores.shape, dtype=bool)
    if threshold >= 1:
        return positive
    desc = np.sort(scores[positive], axis=None)[::-1]
    cum = np.cumsum(desc, dtype=np.float64)
    k = int(np.searchsorted(cum, threshold * cum[-1] * (1 - _SHARE_RTOL), side="left"))
    cutoff = desc[min(k, desc.shape[0] - 1)]
    return positive & (scores >= cutoff)


@dataclass(eq=False)
class PrunedGraph:
    """Which nodes and edges of a Graph survive pruning, and the influences behind the choice."""

    node_threshold: float
    edge_threshold: float
    node_mask: np.ndarray  # bool [n_nodes], final
    node_mask_by_influence: np.ndarray  # bool [n_nodes], after step 1 (influence) only
    edge_mask: sparse.csr_array  # bool [n_nodes, n_nodes], [target node, source node]
    node_influence: np.ndarray  # float64 [n_nodes], w^T B on the full graph
    n_edges_before: int

    @property
    def n_nodes_before(self) -> int:
        return int(self.node_mask.shape[0])

    @property
    def n_nodes_after(self) -> int:
        return int(self.node_mask.sum())

    @property
    def n_edges_after(self) -> int:
        return int(self.edge_mask.nnz)

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """(targets, sources): int64 [n_edges_after] each, sorted by target then source."""
        coo = sparse.coo_array(self.edge_mask)
        order = np.lexsort((coo.col, coo.row))
        return coo.row[order].astype(np.int64), coo.col[order].astype(np.int64)

    def counts(self, graph: Graph) -> dict[str, int]:
        is_feat = graph.kind == NodeKind.FEATURE
        return {
            "nodes_before": self.n_nodes_before,
            "nodes_after": self.n_nodes_after,
            "edges_before": self.n_edges_before,
            "edges_after": self.n_edges_after,
            "features_before": int(is_feat.sum()),
            "features_after": int((is_feat & self.node_mask).sum()),
        }


def nodes_by_influence(graph: Graph, node_threshold: float = DEFAULT_NODE_THRESHOLD,
                       influence_node: np.ndarray | None = None) -> np.ndarray:
    """bool [n_nodes]: the nodes pruning's first step keeps (module docstring, step 1)."""
    check_threshold("node_threshold", node_threshold)
    influence_node = node_influence(graph) if influence_node is None else influence_node
    return _nodes_by_influence(graph, influence_node, node_threshold)


def prune_graph(graph: Graph, node_threshold: float = DEFAULT_NODE_THRESHOLD,
                edge_threshold: float = DEFAULT_EDGE_THRESHOLD) -> PrunedGraph:
    """Prune `graph` as described in the module docstring."""
    check_threshold("node_threshold", node_threshold)
    check_threshold("edge_threshold", edge_threshold)
    influence_node = node_influence(graph)
    node_mask_step1 = nodes_by_influence(graph, node_threshold, influence_node)
    kept_idx = np.flatnonzero(node_mask_step1)
    t_sub, s_sub = _edges_by_score(graph, kept_idx, edge_threshold)
    alive_sub = _drop_dangling(graph.kind[kept_idx], t_sub, s_sub)

    node_mask = np.zeros(graph.n_nodes, dtype=bool)
    node_mask[kept_idx[alive_sub]] = True
    live = alive_sub[t_sub] & alive_sub[s_sub]
    targets, sources = kept_idx[t_sub[live]], kept_idx[s_sub[live]]
    edge_mask = sparse.csr_array(
        (np.ones(targets.shape[0], dtype=bool), (targets, sources)), shape=(graph.n_nodes,) * 2
    )
    return PrunedGraph(
        node_threshold=float(node_threshold),
        edge_threshold=float(edge_threshold),
        node_mask=node_mask,
        node_mask_by_influence=node_mask_step1,
        edge_mask=edge_mask,
        node_influence=influence_node,
        n_edges_before=graph.n_edges(),
    )


def _nodes_by_influence(graph: Graph, influence_node: np.ndarray, threshold: float) -> np.ndarray:
    """Step 1: bool [n_nodes]."""
    inner = (graph.kind == NodeKind.FEATURE) | (graph.kind == NodeKind.ERROR)
    mask = ~inner  # embeddings and logits always kept here
    mask[inner] = keep_top_share(influence_node[inner], threshold)
    return mask


def _edges_by_score(graph: Graph, kept_idx: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Step 2 on the kept-node subgraph: (targets, sources) as indices into kept_idx."""
    kept_t = np.flatnonzero(_is_target(graph.kind[kept_idx]))  # [k_t] positions in kept_idx
    k_s = int(np.searchsorted(kept_idx, graph.n_sources))  # sources are a node prefix: kept_idx[:k_s]
    edges_sub = graph.edges[np.ix_(graph.target_rows(kept_idx[kept_t]), kept_idx[:k_s])]  # [k_t, k_s]
    a_hat_sub = normalized_abs_adjacency(edges_sub, n_nodes=kept_idx.shape[0])
    w_sub_t = graph.logit_weight_vector()[kept_idx[kept_t]]
    n_kept_features = int(np.count_nonzero(graph.kind[kept_idx] == NodeKind.FEATURE))
    influence_sub_s = influence_through(a_hat_sub, w_sub_t, n_kept_features, max_path_length(graph))
    influence_sub_t = np.zeros(kept_t.shape[0])
    influence_sub_t[:n_kept_features] = influence_sub_s[:n_kept_features]  # logits have no outputs
    edge_score_sub = a_hat_sub * (influence_sub_t + w_sub_t)[:, None].astype(a_hat_sub.dtype)
    t_loc, s_loc = np.nonzero(keep_top_share(edge_score_sub, threshold))
    return kept_t[t_loc], s_loc


def _is_target(kind: np.ndarray) -> np.ndarray:
    return (kind == NodeKind.FEATURE) | (kind == NodeKind.LOGIT)


def _drop_dangling(kind_sub: np.ndarray, t_sub: np.ndarray, s_sub: np.ndarray) -> np.ndarray:
    """Step 3: bool alive [n_kept]."""
    n = kind_sub.shape[0]
    alive = np.ones(n, dtype=bool)
    must_send = kind_sub != NodeKind.LOGIT
    must_receive = kind_sub == NodeKind.FEATURE
    while True:
        live = alive[t_sub] & alive[s_sub]
        has_out = np.bincount(s_sub[live], minlength=n) > 0
        has_in = np.bincount(t_sub[live], minlength=n) > 0
        new_alive = alive & (has_out | ~must_send) & (has_in | ~must_receive)
        if np.array_equal(new_alive, alive):
            return alive
        alive = new_alive
