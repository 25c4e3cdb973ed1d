"""The attribution graph as data: a node table and the targets x sources edge matrix.

Node order is fixed: all feature nodes, then error nodes, then token-embedding nodes, then logit
(target) nodes. Every node-table array has one entry per node.

Edges (METHOD.md section 3): only feature and logit nodes have inputs (the targets) and only
feature, error and embedding nodes have outputs (the sources), so the graph holds
`edges` float32 [n_targets, n_sources], the direct linear effect of a source on a target's
pre-activation, and never the all-nodes square:
- target rows: the feature nodes, then the logit nodes, in node order (`target_nodes()`);
- source columns: nodes 0 .. n_sources-1 (features, errors, embeddings: a prefix of node order),
  so source column j is node j and feature row r is feature node r.
`incoming(i)`, `outgoing(i)` and `edge_weights(targets, sources)` read it by node index;
`adjacency` builds the dense [n_nodes, n_nodes] square A[target, source] on each access (small
graphs and old callers only). `Graph(adjacency=A, ...)` still accepts a square (dense or
scipy-sparse) and stores its targets x sources block.

Layers: a feature or error node has its transformer layer; an embedding -1; a logit n_layers. An
edge always goes up in layer and never back in position (the causal order), and embedding and
error nodes have no inputs; construction checks both, so the graph is a DAG in layer order.

Logit weights w (used for influence, METHOD.md section 4): by default the logit probabilities.
A custom target (a logit difference such as "Sacramento - Albany", or any direction) is a logit
node with token_id -1; when a graph has one and the engine passes no `logit_weights`, every
target gets the same weight 1/n_logits (a probability means nothing for a difference).
"""

from __future__ import annotations

import json
from dataclasses import InitVar, dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np
from scipy import sparse

from graphs.errors import GraphError

_ROW_BLOCK = 1024  # rows checked at a time, so validation of a 10k-node graph stays small


class NodeKind(IntEnum):
    FEATURE = 0
    ERROR = 1
    EMBEDDING = 2
    LOGIT = 3


# Node-table arrays: name -> dtype. All have shape [n_nodes].
NODE_TABLE_DTYPES: dict[str, type] = {
    "kind": np.int8,
    "layer": np.int32,
    "position": np.int32,
    "feature": np.int64,
    "activation": np.float32,
    "token_id": np.int64,
}


@dataclass(eq=False, kw_only=True)
class Graph:
    """One prompt's attribution graph (unpruned). See the module docstring for conventions.
    Give `edges` (or, converted once, `adjacency`: the [n_nodes, n_nodes] square)."""

    edges: np.ndarray | None = None  # float32 [n_targets, n_sources], edges[target row, source]
    kind: np.ndarray  # int8 [n_nodes], NodeKind codes, non-decreasing
    layer: np.ndarray  # int32 [n_nodes]
    position: np.ndarray  # int32 [n_nodes]
    feature: np.ndarray  # int64 [n_nodes], -1 unless a feature
    activation: np.ndarray  # float32 [n_nodes], 0 unless a feature
    token_id: np.ndarray  # int64 [n_nodes]: embedding's token, logit's vocab id (-1: custom target)
    logit_probabilities: np.ndarray  # float32 [n_logits]
    logit_labels: list[str]  # [n_logits], e.g. "95" or "Sacramento - Albany"
    prompt: str
    token_ids: list[int]  # [n_pos]
    token_strs: list[str]  # [n_pos]
    n_layers: int
    logit_weights: np.ndarray | None = None  # float32 [n_logits]; None -> see module docstring
    model: dict[str, Any] = field(default_factory=dict)  # identity: name, path, n_layers, d_model...
    transcoders: dict[str, Any] = field(default_factory=dict)  # identity: path, kind, n_features...
    settings: dict[str, Any] = field(default_factory=dict)  # whatever the engine records
    timing_seconds: dict[str, float] = field(default_factory=dict)
    feature_labels: dict[int, str] = field(default_factory=dict)  # node index -> description
    attention: Any = None  # graphs.attention.AttentionData (head loadings, QK attributions) or None
    adjacency: InitVar[np.ndarray | sparse.sparray | None] = None  # [n_nodes, n_nodes] square, input only

    def __post_init__(self, adjacency: np.ndarray | sparse.sparray | None) -> None:
        for name, dtype in NODE_TABLE_DTYPES.items():
            setattr(self, name, np.asarray(getattr(self, name), dtype=dtype))
        self.logit_probabilities = np.asarray(self.logit_probabilities, dtype=np.float32)
        self.logit_labels = [str(s) for s in self.logit_labels]
        self.token_ids = [int(t) for t in self.token_ids]
        self.token_strs = [str(s) for s in self.token_strs]
        self.n_layers = int(self.n_layers)
        self.prompt = str(self.prompt)
        for name in ("model", "transcoders", "settings", "timing_seconds"):
            setattr(self, name, _json_dict(name, getattr(self, name)))
        self.feature_labels = {int(k): str(v) for k, v in self.feature_labels.items()}
        _check_node_table(self)
        if self.logit_weights is None:
            self.logit_weights = _default_logit_weights(self)
        self.logit_weights = np.asarray(self.logit_weights, dtype=np.float32)
        _check_logits(self)
        _check_unique_ids(self)
        self.edges = _edges_from_inputs(self, self.edges, adjacency)
        _check_edges(self)

    # ---- sizes and index ranges -------------------------------------------------------------
    @property
    def n_nodes(self) -> int:
        return int(self.kind.shape[0])

    @property
    def n_pos(self) -> int:
        return len(self.token_ids)

    def _kind_slice(self, kind: NodeKind) -> slice:
        start, stop = np.searchsorted(self.kind, [int(kind), int(kind) + 1])
        return slice(int(start), int(stop))

    @property
    def feature_slice(self) -> slice:
        return self._kind_slice(NodeKind.FEATURE)

    @property
    def error_slice(self) -> slice:
        return self._kind_slice(NodeKind.ERROR)

    @property
    def embedding_slice(self) -> slice:
        return self._kind_slice(NodeKind.EMBEDDING)

    @property
    def logit_slice(self) -> slice:
        return self._kind_slice(NodeKind.LOGIT)

    @property
    def n_logits(self) -> int:
        sl = self.logit_slice
        return sl.stop - sl.start

    def logit_weight_vector(self) -> np.ndarray:
        """w as a float64 [n_nodes] vector: the logit weights at the logit nodes, 0 elsewhere."""
        w_node = np.zeros(self.n_nodes, dtype=np.float64)
        w_node[self.logit_slice] = self.logit_weights
        return w_node

    # ---- edges: targets x sources ----------------------------------------------------------
    @property
    def n_sources(self) -> int:
        """Source columns: nodes 0 .. n_sources-1 (features, errors, embeddings)."""
        return self.logit_slice.start

    @property
    def n_targets(self) -> int:
        """Target rows: the feature nodes, then the logit nodes."""
        return self.feature_slice.stop + self.n_logits

    def target_nodes(self) -> np.ndarray:
        """int64 [n_targets]: the node index of each row of `edges`."""
        return _target_nodes(self.kind)

    def target_row(self, node: int) -> int | None:
        """The row of `edges` holding node's inputs; None for a node without inputs."""
        kind = int(self.kind[node])
        if kind == NodeKind.FEATURE:
            return int(node)
        if kind == NodeKind.LOGIT:
            return self.feature_slice.stop + int(node) - self.logit_slice.start
        return None

    def target_rows(self, nodes: np.ndarray) -> np.ndarray:
        """int64 [k]: the rows of `edges` of the given nodes, -1 for nodes without inputs."""
        return _target_rows(self.kind)[np.asarray(nodes, dtype=np.int64)]

    def incoming(self, node: int) -> np.ndarray:
        """float32 [n_nodes]: the weight of every node's edge into `node` (A[node, :])."""
        out = np.zeros(self.n_nodes, dtype=np.float32)
        row = self.target_row(node)
        if row is not None:
            out[:self.n_sources] = self.edges[row]
        return out

    def outgoing(self, node: int) -> np.ndarray:
        """float32 [n_nodes]: the weight of `node`'s edge into every node (A[:, node])."""
        out = np.zeros(self.n_nodes, dtype=np.float32)
        if node < self.n_sources:
            out[self.target_nodes()] = self.edges[:, node]
        return out

    def edge_weights(self, targets: np.ndarray, sources: np.ndarray) -> np.ndarray:
        """float32 [k]: A[targets[i], sources[i]] for node indices (0 where no edge can be)."""
        targets, sources = np.asarray(targets, dtype=np.int64), np.asarray(sources, dtype=np.int64)
        rows = self.target_rows(targets)
        ok = (rows >= 0) & (sources < self.n_sources)
        out = np.zeros(targets.shape, dtype=np.float32)
        out[ok] = self.edges[rows[ok], sources[ok]]
        return out

    def dense_adjacency(self) -> np.ndarray:
        """float32 [n_nodes, n_nodes], A[target, source]: the all-nodes square, built on each call
        (n_nodes^2 floats: for small graphs and old callers)."""
        square = np.zeros((self.n_nodes, self.n_nodes), dtype=np.float32)
        square[self.target_nodes(), :self.n_sources] = self.edges
        return square

    def n_edges(self) -> int:
        return int(np.count_nonzero(self.edges))

    # ---- node ids (Neuronpedia / circuit-tracer graph JSON convention) -----------------------
    def logit_vocab_id(self, i: int) -> int:
        """A logit node's vocab id; a custom target gets a virtual id past the vocabulary
        (d_vocab + its index among the logits), as circuit-tracer does for custom targets."""
        token = int(self.token_id[i])
        if token >= 0:
            return token
        d_vocab = int(self.model.get("d_vocab", 0) or 0)
        base = max(d_vocab, int(self.token_id.max()) + 1, max(self.token_ids, default=-1) + 1)
        return base + (i - self.logit_slice.start)

    def node_id(self, i: int) -> str:
        """Viewer node id: features "{layer}_{feature}_{pos}", errors "{layer}_-1_{pos}",
        embeddings "E_{token_id}_{pos}", logits "{n_layers + 1}_{vocab_id}_{pos}"."""
        kind = NodeKind(int(self.kind[i]))
        layer, pos = int(self.layer[i]), int(self.position[i])
        if kind is NodeKind.FEATURE:
            return f"{layer}_{int(self.feature[i])}_{pos}"
        if kind is NodeKind.ERROR:
            return f"{layer}_-1_{pos}"
        if kind is NodeKind.EMBEDDING:
            return f"E_{int(self.token_id[i])}_{pos}"
        return f"{self.n_layers + 1}_{self.logit_vocab_id(i)}_{pos}"

    def node_label(self, i: int) -> str:
        """A short human label: the feature's description, the token, or the logit's label."""
        kind = NodeKind(int(self.kind[i]))
        pos = int(self.position[i])
        if kind is NodeKind.FEATURE:
            return self.feature_labels.get(i, "")
        if kind is NodeKind.ERROR:
            return f"error L{int(self.layer[i])} @{pos}"
        if kind is NodeKind.EMBEDDING:
            return self.token_strs[pos]
        return self.logit_labels[i - self.logit_slice.start]

    # ---- equality (arrays compared exactly) --------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Graph):
            return NotImplemented
        arrays = ("edges", *NODE_TABLE_DTYPES, "logit_probabilities", "logit_weights")
        plain = ("logit_labels", "prompt", "token_ids", "token_strs", "n_layers", "model",
                 "transcoders", "settings", "timing_seconds", "feature_labels")
        return all(np.array_equal(getattr(self, a), getattr(other, a)) for a in arrays) and all(
            getattr(self, p) == getattr(other, p) for p in plain
        )


# Read-only `graph.adjacency` (the dense square, built on each access); as a constructor argument
# `adjacency` is the InitVar above. Assigned after the dataclass is built so the two do not clash.
Graph.adjacency = property(Graph.dense_adjacency, doc=Graph.dense_adjacency.__doc__)  # type: ignore[assignment]


def _target_rows(kind: np.ndarray) -> np.ndarray:
    """int64 [n_nodes]: each node's row of `edges`, -1 for errors and embeddings."""
    rows = np.full(kind.shape[0], -1, dtype=np.int64)
    is_target = (kind == NodeKind.FEATURE) | (kind == NodeKind.LOGIT)
    rows[is_target] = np.arange(int(is_target.sum()))
    return rows


def _target_nodes(kind: np.ndarray) -> np.ndarray:
    return np.flatnonzero((kind == NodeKind.FEATURE) | (kind == NodeKind.LOGIT)).astype(np.int64)


def make_node_table(
    feature_layer_pos_feat: np.ndarray,  # int [n_features, 3]: (layer, position, feature id)
    feature_activation: np.ndarray,  # float [n_features]
    error_layer_pos: np.ndarray,  # int [n_errors, 2]: (layer, position)
    embedding_token_ids: list[int],  # [n_pos]: one embedding node per position, in order
    logit_token_ids: list[int],  # [n_logits]: vocab id per target, -1 for a custom target
    n_layers: int,
) -> dict[str, np.ndarray]:
    """The six node-table arrays in the fixed order, ready for `Graph(edges=E, **table, ...)`."""
    lpf = np.asarray(feature_layer_pos_feat, dtype=np.int64).reshape(-1, 3)
    lp = np.asarray(error_layer_pos, dtype=np.int64).reshape(-1, 2)
    n_feat, n_err, n_pos, n_logit = len(lpf), len(lp), len(embedding_token_ids), len(logit_token_ids)
    last_pos = n_pos - 1
    kind = np.repeat(np.array([0, 1, 2, 3], dtype=np.int8), [n_feat, n_err, n_pos, n_logit])
    layer = np.concatenate([lpf[:, 0], lp[:, 0], np.full(n_pos, -1), np.full(n_logit, n_layers)])
    position = np.concatenate([lpf[:, 1], lp[:, 1], np.arange(n_pos), np.full(n_logit, last_pos)])
    feature = np.concatenate([lpf[:, 2], np.full(n_err + n_pos + n_logit, -1)])
    activation = np.concatenate(
        [np.asarray(feature_activation, dtype=np.float32).reshape(-1), np.zeros(n_err + n_pos + n_logit)]
    )
    token_id = np.concatenate(
        [np.full(n_feat + n_err, -1), np.asarray(embedding_token_ids, dtype=np.int64).reshape(-1),
         np.asarray(logit_token_ids, dtype=np.int64).reshape(-1)]
    )
    table = dict(kind=kind, layer=layer, position=position, feature=feature,
                 activation=activation, token_id=token_id)
    return {name: np.asarray(table[name], dtype=dtype) for name, dtype in NODE_TABLE_DTYPES.items()}


# ---- validation ------------------------------------------------------------------------------
def _json_dict(name: str, value: Any) -> dict[str, Any]:
    """Metadata dicts are stored as JSON: normalise once (numpy scalars -> Python, tuples -> lists)
    so that what is saved is what is held, and a save/load round trip is exact."""
    if not isinstance(value, dict):
        raise GraphError(f"graph {name} must be a dict, got {type(value).__name__}")
    try:
        return json.loads(json.dumps(value, default=_json_default, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise GraphError(f"graph {name} is not JSON-serialisable: {err}") from None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _check_node_table(g: Graph) -> None:
    n = g.kind.shape[0] if g.kind.ndim == 1 else -1
    if n < 0:
        raise GraphError(f"graph kind must be 1-D, got shape {g.kind.shape}")
    for name in NODE_TABLE_DTYPES:
        if getattr(g, name).shape != (n,):
            raise GraphError(f"graph {name} has shape {getattr(g, name).shape}, expected ({n},)")
    if n and (g.kind.min() < 0 or g.kind.max() > 3):
        raise GraphError("graph kind codes must be 0..3 (feature, error, embedding, logit)")
    if np.any(np.diff(g.kind) < 0):
        raise GraphError("graph nodes out of order: features, then errors, embeddings, logits")
    if len(g.token_strs) != len(g.token_ids):
        raise GraphError(f"graph has {len(g.token_ids)} token ids but {len(g.token_strs)} token strings")
    if n and (g.position.min() < 0 or g.position.max() >= max(len(g.token_ids), 1)):
        raise GraphError(f"graph positions must lie in [0, {len(g.token_ids)})")
    if not np.all(np.isfinite(g.activation)):
        raise GraphError("graph activations contain NaN or Inf")
    is_feat = g.kind == NodeKind.FEATURE
    if np.any(g.feature[is_feat] < 0) or np.any(g.feature[~is_feat] != -1):
        raise GraphError("graph feature ids must be >= 0 for features and -1 for other nodes")
    emb = g.kind == NodeKind.EMBEDDING
    if np.any(g.token_id[emb] != np.asarray(g.token_ids, dtype=np.int64)[g.position[emb]]):
        raise GraphError("graph embedding nodes must carry the token id at their position")
    expected_layer = {NodeKind.EMBEDDING: -1, NodeKind.LOGIT: g.n_layers}
    for kind, layer in expected_layer.items():
        if np.any(g.layer[g.kind == kind] != layer):
            raise GraphError(f"graph {kind.name.lower()} nodes must have layer {layer}")
    inner = (g.kind == NodeKind.FEATURE) | (g.kind == NodeKind.ERROR)
    if np.any(g.layer[inner] < 0) or np.any(g.layer[inner] >= g.n_layers):
        raise GraphError(f"graph feature/error layers must lie in [0, {g.n_layers})")
    for i in g.feature_labels:
        if not (0 <= i < n):
            raise GraphError(f"graph feature label for node {i}, which does not exist")


def _default_logit_weights(g: Graph) -> np.ndarray:
    custom = g.token_id[g.logit_slice] < 0
    if custom.any():
        return np.full(g.n_logits, 1.0 / max(g.n_logits, 1), dtype=np.float32)
    return g.logit_probabilities.copy()


def _check_logits(g: Graph) -> None:
    n_logits = g.n_logits
    for name in ("logit_probabilities", "logit_weights"):
        arr = getattr(g, name)
        if arr.shape != (n_logits,):
            raise GraphError(f"graph {name} has shape {arr.shape}, expected ({n_logits},)")
        if not np.all(np.isfinite(arr)) or np.any(arr < 0):
            raise GraphError(f"graph {name} must be finite and >= 0")
    if n_logits == 0:
        raise GraphError("graph has no logit (target) nodes")
    if not g.logit_weights.sum() > 0:
        raise GraphError("graph logit weights sum to 0: no target carries any weight")
    if len(g.logit_labels) != n_logits:
        raise GraphError(f"graph has {n_logits} logit nodes but {len(g.logit_labels)} logit labels")


def _check_unique_ids(g: Graph) -> None:
    seen: set[str] = set()
    for i in range(g.n_nodes):
        node_id = g.node_id(i)
        if node_id in seen:
            raise GraphError(f"graph has two nodes with id {node_id} (duplicate feature, error or target)")
        seen.add(node_id)


def _edges_from_inputs(g: Graph, edges: np.ndarray | None,
                       adjacency: np.ndarray | sparse.sparray | None) -> np.ndarray:
    """float32 [n_targets, n_sources] from `edges` or from the square `adjacency` (whose other
    entries must be zero: rows of error and embedding nodes, columns of logit nodes). Both given:
    they must agree."""
    n, shape = g.n_nodes, (g.n_targets, g.n_sources)
    if edges is None and adjacency is None:
        raise GraphError("graph needs edges [n_targets, n_sources] (or an adjacency square)")
    if edges is not None:
        edges = np.asarray(edges, dtype=np.float32)
        if edges.shape != shape:
            raise GraphError(f"graph edges has shape {edges.shape}, expected {shape} (targets x sources)")
    if adjacency is None:
        return edges
    square = sparse.csr_array(adjacency) if sparse.issparse(adjacency) else np.asarray(adjacency, dtype=np.float32)
    if square.shape != (n, n):
        raise GraphError(f"graph adjacency has shape {square.shape}, expected ({n}, {n})")
    for sl, what in ((g.error_slice, "error"), (g.embedding_slice, "embedding")):
        if _any_nonzero(square[sl.start:sl.stop]):
            raise GraphError(f"graph adjacency has edges into {what} nodes (they have no inputs)")
    from_logits = square[:, g.n_sources:]
    if _any_nonzero(from_logits):
        dense = from_logits.toarray() if sparse.issparse(from_logits) else from_logits
        t, s = np.argwhere(dense != 0)[0]
        _raise_against_causal_order(g, int(s) + g.n_sources, int(t))
    if sparse.issparse(square):
        from_square = square[g.target_nodes()][:, :g.n_sources].toarray().astype(np.float32, copy=False)
    else:
        from_square = square[np.ix_(g.target_nodes(), np.arange(g.n_sources))]
    if edges is not None and not np.array_equal(edges, from_square, equal_nan=True):
        raise GraphError("graph edges and adjacency disagree (give one of them)")
    return from_square


def _any_nonzero(block) -> bool:
    if sparse.issparse(block):
        return bool(block.count_nonzero())
    return bool(np.any(block != 0))


def _raise_against_causal_order(g: Graph, source: int, target: int) -> None:
    raise GraphError(
        f"graph edge {g.node_id(source)} -> {g.node_id(target)} goes against the causal order "
        "(edges must go up in layer and not back in position)"
    )


def _check_edges(g: Graph) -> None:
    """Finite, every edge going up in layer and not back in position. Checked in row blocks so a
    10k-node graph needs no n^2 temporaries."""
    targets = g.target_nodes()
    src_layer, src_pos = g.layer[:g.n_sources], g.position[:g.n_sources]
    for start in range(0, g.n_targets, _ROW_BLOCK):
        rows = g.edges[start:start + _ROW_BLOCK]
        if not np.all(np.isfinite(rows)):
            raise GraphError("graph adjacency contains NaN or Inf")
        t_idx = targets[start:start + rows.shape[0]]
        bad = (rows != 0) & (
            (src_layer[None, :] >= g.layer[t_idx, None]) | (src_pos[None, :] > g.position[t_idx, None])
        )
        if bad.any():
            t, s = np.argwhere(bad)[0]
            _raise_against_causal_order(g, int(s), int(t_idx[t]))
