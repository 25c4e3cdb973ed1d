"""The strongest path through a graph: which chain of nodes carries most of a source's influence
on a target.

A path s = n_0 -> n_1 -> ... -> n_k = t contributes A_hat[n_1, n_0] * A_hat[n_2, n_1] * ... to the
influence of s on t (METHOD.md section 4: influence sums these products over all paths), with A_hat
= |A| and each row normalised to sum 1. `strongest_path` finds the path with the largest product
among the kept edges of a pruned graph, through intermediate nodes of the allowed kinds (features
only by default: error nodes are kept out because nothing can be read from them), by max-product
relaxation from the target backwards: the graph is a DAG whose edges go up in layer, so at most
(number of distinct layers) rounds settle every node.

    path = strongest_path(graph, pruned, sources=[emb_france], target=logit_paris)
    path.nodes, path.weight, path.step_weights
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from graphs.graph import Graph, NodeKind
from graphs.prune import PrunedGraph, max_path_length

_ROW_BLOCK = 2048  # target rows of `edges` read at once for the row sums


@dataclass
class Path:
    """A chain of node indices from a source to the target, and its weight."""

    nodes: list[int]            # source first, target last
    weight: float               # product of the normalised edge weights along the path
    step_weights: list[float]   # A_hat[n_{i+1}, n_i] for each step

    def __bool__(self) -> bool:
        return len(self.nodes) > 1


def abs_row_sums(graph: Graph) -> np.ndarray:
    """float64 [n_nodes]: sum_s |A[t, s]| per target node (0 for nodes without inputs), read from
    the targets x sources block in row chunks."""
    out = np.zeros(graph.n_nodes, dtype=np.float64)
    rows = np.empty(graph.n_targets, dtype=np.float64)
    for start in range(0, graph.n_targets, _ROW_BLOCK):
        rows[start:start + _ROW_BLOCK] = np.abs(graph.edges[start:start + _ROW_BLOCK]).sum(axis=1, dtype=np.float64)
    out[graph.target_nodes()] = rows
    return out


def kept_edge_weights(graph: Graph, pruned: PrunedGraph) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(targets, sources, A_hat values) of the pruned graph's kept edges, A_hat normalised over the
    full graph's rows (each weight is the edge's share of its target's total input)."""
    targets, sources = pruned.edges()
    row_sum = abs_row_sums(graph)
    values = np.abs(graph.edge_weights(targets, sources).astype(np.float64))
    a_hat = np.divide(values, row_sum[targets], out=np.zeros_like(values), where=row_sum[targets] > 0)
    return targets, sources, a_hat


def strongest_path(graph: Graph, pruned: PrunedGraph, sources, target: int,
                   through: tuple[NodeKind, ...] = (NodeKind.FEATURE,),
                   edges: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> Path:
    """The kept path with the largest product of A_hat weights from any of `sources` to `target`
    through at least one intermediate node, every intermediate node being of a kind in `through`.
    An empty Path when there is none. `edges` reuses kept_edge_weights(graph, pruned) across calls."""
    t_idx, s_idx, w = edges if edges is not None else kept_edge_weights(graph, pruned)
    n = graph.n_nodes
    allowed = np.isin(graph.kind, [int(k) for k in through])
    allowed[target] = False
    # best[v]: the strongest path from an allowed node v to the target through allowed nodes
    best, nxt = np.zeros(n), np.full(n, -1, dtype=np.int64)
    best[target] = 1.0
    into = allowed[s_idx]
    t_in, s_in, w_in = t_idx[into], s_idx[into], w[into]
    for _ in range(max_path_length(graph) + 1):
        ok = (best[t_in] > 0) & (allowed[t_in] | (t_in == target))
        changed = _relax(best, nxt, t_in[ok], s_in[ok], w_in[ok] * best[t_in[ok]])
        if not changed:
            break
    # the first step: from a source into an allowed node (never straight to the target)
    sources = np.atleast_1d(np.asarray(sources, dtype=np.int64))
    first = np.isin(s_idx, sources) & allowed[t_idx] & (best[t_idx] > 0)
    if not first.any():
        return Path([], 0.0, [])
    score = w[first] * best[t_idx[first]]
    i = int(np.argmax(score))
    nodes = [int(s_idx[first][i]), int(t_idx[first][i])]
    while nodes[-1] != target and len(nodes) <= n:
        nodes.append(int(nxt[nodes[-1]]))
    weights = [_edge_weight(t_idx, s_idx, w, b, a) for a, b in zip(nodes[:-1], nodes[1:])]
    return Path(nodes, float(np.prod(weights)), weights)


def _relax(best: np.ndarray, nxt: np.ndarray, targets: np.ndarray, sources: np.ndarray,
           cand: np.ndarray) -> bool:
    """best[s] = max(best[s], max over edges s -> t of cand); nxt[s] = that t. True if any changed."""
    if not len(cand):
        return False
    order = np.lexsort((cand, sources))
    last = np.r_[sources[order][1:] != sources[order][:-1], True]
    top = order[last]
    better = cand[top] > best[sources[top]] * (1 + 1e-12)
    if not better.any():
        return False
    best[sources[top][better]] = cand[top][better]
    nxt[sources[top][better]] = targets[top][better]
    return True


def _edge_weight(t_idx: np.ndarray, s_idx: np.ndarray, w: np.ndarray, target: int, source: int) -> float:
    hit = np.flatnonzero((t_idx == target) & (s_idx == source))
    return float(w[hit[0]]) if len(hit) else 0.0


def reaching(pruned: PrunedGraph, target: int) -> np.ndarray:
    """bool [n_nodes]: the nodes from which the kept edges lead to `target` (target excluded)."""
    mask = sparse.csr_array(pruned.edge_mask)
    seen = np.zeros(mask.shape[0], dtype=bool)
    frontier = np.array([target])
    while len(frontier):
        sources = np.unique(np.concatenate([mask.indices[mask.indptr[t]:mask.indptr[t + 1]] for t in frontier]))
        frontier = sources[~seen[sources]]
        seen[frontier] = True
    seen[target] = False
    return seen
