"""What a graph knows about its attention heads, as plain data (computed by circuits.attention).

- Head loadings of edges: for E edges (target node, source node), loadings float32 [E, L, H], the
  share of the edge carried by each head of each block (a path counts for the head of its last
  cross-position hop), and remainder float32 [E], the paths that never leave the position (zero for
  cross-position edges). loadings.sum((1, 2)) + remainder is the edge. A traced graph lists its
  kept cross-position edges only: a same-position edge has no loadings (causal attention never
  brings a path back to the position it left), all of it is its remainder, and listing it would
  add [L, H] zeros (0.22 GB on a 16-token SmolLM2 graph).
- QK attributions of explained heads (`HeadQK`): one head's pre-softmax score at a (query, key)
  split into (query-side node, key-side node) pairs, marginals and named remainder terms; node ids
  follow Graph.node_id, plus bias pseudo-nodes; `nodes` describes every id a result names.

Stored in the .npz by graphs.io (arrays `attention_*`, heads in the metadata JSON) and written to
viewer JSON by graphs.neuronpedia (link `head_loadings`, node `qk_tracing_results`, `qk_only_nodes`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphs.errors import GraphError


@dataclass(eq=False)
class HeadLoadings:
    target: np.ndarray  # int64 [E] target node index
    source: np.ndarray  # int64 [E] source node index
    loadings: np.ndarray  # float32 [E, L, H]
    remainder: np.ndarray  # float32 [E]

    def __post_init__(self) -> None:
        self.target = np.asarray(self.target, dtype=np.int64)
        self.source = np.asarray(self.source, dtype=np.int64)
        self.loadings = np.asarray(self.loadings, dtype=np.float32)
        self.remainder = np.asarray(self.remainder, dtype=np.float32)
        E = self.target.shape[0]
        if self.source.shape != (E,) or self.remainder.shape != (E,) or self.loadings.ndim != 3 \
                or self.loadings.shape[0] != E:
            raise GraphError(f"head loadings have inconsistent shapes: target {self.target.shape}, source "
                             f"{self.source.shape}, loadings {self.loadings.shape}, remainder {self.remainder.shape}")
        self._index: dict[tuple[int, int], int] | None = None  # built on the first row() call

    def row(self, target: int, source: int) -> int | None:
        """The entry of edge (target, source), or None if it has no loadings."""
        if self._index is None:
            self._index = {(t, s): i for i, (t, s) in enumerate(zip(self.target.tolist(), self.source.tolist()))}
        return self._index.get((int(target), int(source)))

    def top_heads(self, target: int, source: int, n: int = 8, min_share: float = 1e-3) -> list[list[float]]:
        """[[layer, head, loading], ...] of the edge, largest |loading| first, those holding at
        least `min_share` of the edge's total |loading|; [] if the edge has none."""
        i = self.row(target, source)
        if i is None:
            return []
        flat = self.loadings[i].reshape(-1)
        total = float(np.abs(flat).sum())
        if total == 0:
            return []
        H = self.loadings.shape[2]
        order = np.argsort(-np.abs(flat), kind="stable")[:n]
        return [[int(j // H), int(j % H), float(flat[j])] for j in order if abs(flat[j]) >= min_share * total]

    def head_totals(self, mask: np.ndarray | None = None, block: int = 1 << 14) -> np.ndarray:
        """float64 [L, H]: sum of |loading| over the edges (those in `mask`), `block` edges at a
        time (no copy of the [E, L, H] loadings: 0.77 GB for a 716k-edge SmolLM2 graph)."""
        totals = np.zeros(self.loadings.shape[1:], dtype=np.float64)
        rows = np.arange(len(self.loadings)) if mask is None else np.flatnonzero(mask)
        for i in range(0, len(rows), block):
            part = rows[i:i + block]
            chunk = self.loadings[part[0]:part[-1] + 1] if part[-1] - part[0] + 1 == len(part) else self.loadings[part]
            totals += np.abs(chunk).sum(0, dtype=np.float64)
        return totals


@dataclass
class HeadQK:
    """One head's QK attribution at one (query, key) position pair."""

    layer: int
    head: int
    query: int
    key: int
    score: float  # the sum of every pair and remainder (before any soft cap)
    model_score: float  # what the model computed (before any soft cap)
    pattern: float  # the head's attention weight of query on key
    carried: float  # sum of |loading| of the graph's edges on this head
    pairs: list[list]  # [[q_node_id, k_node_id, value]], largest |value| first
    q_marginals: list[list]  # [[q_node_id, value]]
    k_marginals: list[list]  # [[k_node_id, value]]
    remainders: dict[str, float]  # named terms beside the node pairs
    nodes: dict[str, dict[str, Any]]  # node_id -> {feature_type, layer, ctx_idx, feature, clerp, activation}
    soft_cap: float | None = None

    @property
    def head_id(self) -> str:
        return f"L{self.layer}H{self.head}@{self.query}->{self.key}"

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "head": self.head, "query": self.query, "key": self.key,
                "score": self.score, "model_score": self.model_score, "pattern": self.pattern,
                "carried": self.carried, "pairs": self.pairs, "q_marginals": self.q_marginals,
                "k_marginals": self.k_marginals, "remainders": self.remainders, "nodes": self.nodes,
                "soft_cap": self.soft_cap}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> HeadQK:
        try:
            return cls(**{k: doc[k] for k in ("layer", "head", "query", "key", "score", "model_score", "pattern",
                                              "carried", "pairs", "q_marginals", "k_marginals", "remainders",
                                              "nodes")}, soft_cap=doc.get("soft_cap"))
        except (KeyError, TypeError) as err:
            raise GraphError(f"bad QK attribution record ({err})") from None


@dataclass
class AttentionData:
    """A graph's attention results: head loadings of its kept edges, QK attributions of its heads."""

    n_heads: int
    loadings: HeadLoadings | None = None
    heads: list[HeadQK] = field(default_factory=list)


_LOADING_ARRAYS = ("attention_target", "attention_source", "attention_loadings", "attention_remainder")


def attention_arrays(data: AttentionData) -> dict[str, np.ndarray]:
    """The .npz arrays of the head loadings (none without loadings)."""
    if data.loadings is None:
        return {}
    lo = data.loadings
    return dict(zip(_LOADING_ARRAYS, (lo.target, lo.source, lo.loadings, lo.remainder)))


def attention_metadata(data: AttentionData) -> dict[str, Any]:
    return {"n_heads": data.n_heads, "heads": [h.to_json() for h in data.heads]}


def read_attention(npz, meta: dict[str, Any] | None) -> AttentionData | None:
    """AttentionData from an .npz opened with np.load and its metadata["attention"] (None if absent)."""
    if meta is None:
        return None
    loadings = None
    if all(k in npz.files for k in _LOADING_ARRAYS):
        loadings = HeadLoadings(*(npz[k] for k in _LOADING_ARRAYS))
    return AttentionData(int(meta["n_heads"]), loadings, [HeadQK.from_json(h) for h in meta.get("heads", [])])


def add_attention_json(doc: dict[str, Any], graph, targets: np.ndarray, sources: np.ndarray) -> None:
    """Add a graph's attention results to its viewer JSON `doc` (links in the order of the kept
    edges targets[i] <- sources[i]), as Neuronpedia's schema places them:
    - each link with loadings gets `head_loadings` [[layer, head, loading], ...] (largest first);
    - each explained head's QK attribution goes to `nodes[].qk_tracing_results` of the kept node at
      its query position that receives the most of that head's loading from other positions (one
      head per node; `head` inside says which head, at which query and key positions);
    - contributors absent from `nodes` go to the top-level `qk_only_nodes`;
    - our extra top-level `attention_heads` lists every explained head (for the viewer)."""
    data: AttentionData | None = graph.attention
    if data is None:
        return
    lo = data.loadings
    if lo is not None:
        for link, t, s in zip(doc["links"], targets.tolist(), sources.tolist()):
            heads = lo.top_heads(t, s)
            if heads:
                link["head_loadings"] = heads
    by_id = {n["node_id"]: n for n in doc["nodes"]}
    used: set[str] = set()
    only: dict[str, dict[str, Any]] = {}
    for qk in data.heads:
        node_id = _host_node(graph, lo, qk, targets, sources, used, by_id)
        result = {"pair_wise_contributors": qk.pairs, "top_q_marginal_contributors": qk.q_marginals,
                  "top_k_marginal_contributors": qk.k_marginals,
                  "head": {k: v for k, v in qk.to_json().items() if k not in ("pairs", "q_marginals", "k_marginals",
                                                                               "nodes")}}
        if node_id is not None:
            by_id[node_id]["qk_tracing_results"] = result
            used.add(node_id)
        for cid, desc in qk.nodes.items():
            if cid not in by_id:
                only[cid] = {"clerp": "", **desc, "node_id": cid}
    if only:
        doc["qk_only_nodes"] = only
    doc["attention_heads"] = [{**h.to_json(), "node_id": None} for h in data.heads]
    for entry, qk in zip(doc["attention_heads"], data.heads):
        entry["node_id"] = next((n for n, v in by_id.items() if v.get("qk_tracing_results", {}).get("head", {})
                                 .get("layer") == qk.layer and v["qk_tracing_results"]["head"]["head"] == qk.head
                                 and v["qk_tracing_results"]["head"]["query"] == qk.query), None)


def _host_node(graph, lo: HeadLoadings | None, qk: HeadQK, targets: np.ndarray, sources: np.ndarray,
               used: set[str], by_id: dict) -> str | None:
    """The kept node at the head's query position receiving the most of its loading from other
    positions, not yet holding a head's results."""
    if lo is None:
        return None
    mass: dict[int, float] = {}
    for t, s in zip(targets.tolist(), sources.tolist()):
        if graph.position[t] != qk.query or graph.position[s] == qk.query:
            continue
        i = lo.row(t, s)
        if i is not None:
            mass[t] = mass.get(t, 0.0) + abs(float(lo.loadings[i, qk.layer, qk.head]))
    for t in sorted(mass, key=lambda n: -mass[n]):
        node_id = graph.node_id(t)
        if mass[t] > 0 and node_id not in used and node_id in by_id:
            return node_id
    return None
