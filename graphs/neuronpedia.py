"""The graph JSON read by Neuronpedia-style attribution-graph viewers: {metadata, qParams, nodes, links}.

Field names and id formats follow circuit-tracer's graph files (schema_version 1):
- node_id: features "{layer}_{feature}_{pos}", errors "{layer}_-1_{pos}", embeddings
  "E_{token}_{pos}", logits "{n_layers + 1}_{vocab}_{pos}" (see Graph.node_id);
- jsNodeId: features "{layer}_{feature}-0", errors "{layer}_-1-{pos}", embeddings "E_{token}-{pos}",
  logits "L_{vocab}-{pos}";
- feature: features Cantor(layer, feature) = (l + f)(l + f + 1)/2 + f, errors -1, embeddings the
  position, logits the vocab id; layer is a string ("E" for embeddings, n_layers + 1 for logits);
- influence: as in circuit-tracer, a feature or error node's cumulative influence share: the share
  of the total feature+error influence held by it and every more influential feature or error node
  (small = important; the node step of pruning keeps the nodes up to node_threshold). Null for
  embeddings and logits, which pruning keeps regardless. Our extra field `influence_raw` holds
  every node's own influence w^T B (null for logits).
Links {source, target, weight} are the kept edges with their raw adjacency weight.
With attention results (graphs.attention): links' `head_loadings`, nodes' `qk_tracing_results`,
top-level `qk_only_nodes` and our `attention_heads`. Our extras in metadata: scores, counts, thresholds, timing_seconds, model, transcoders,
generation_settings (the graph's settings without unset (None) values: Neuronpedia's schema types
them, e.g. max_feature_nodes must be an integer when present), pruning_settings (the thresholds).
graphs/viewer_read.py reads these files back (also circuit-tracer's and Neuronpedia's).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from graphs.atomic import atomic_write_text
from graphs.attention import add_attention_json
from graphs.graph import Graph, NodeKind
from graphs.prune import PrunedGraph
from graphs.scores import compute_scores

FEATURE_TYPES = {
    NodeKind.FEATURE: "cross layer transcoder",
    NodeKind.ERROR: "mlp reconstruction error",
    NodeKind.EMBEDDING: "embedding",
    NodeKind.LOGIT: "logit",
}


class ViewerMetadata(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slug: str
    scan: str
    transcoder_list: list[str] = Field(default_factory=list)
    prompt_tokens: list[str]
    prompt: str
    node_threshold: float
    schema_version: int = 1
    scores: dict[str, float | None]
    counts: dict[str, int]
    thresholds: dict[str, float]
    timing_seconds: dict[str, Any]
    model: dict[str, Any]
    transcoders: dict[str, Any]
    generation_settings: dict[str, Any]
    pruning_settings: dict[str, float]


class ViewerQParams(BaseModel):
    pinnedIds: list[str] = Field(default_factory=list)
    supernodes: list[list[str]] = Field(default_factory=list)
    linkType: str = "both"
    clickedId: str = ""
    sg_pos: str = ""


class ViewerNode(BaseModel):
    node_id: str
    feature: int
    layer: str
    ctx_idx: int
    feature_type: str
    token_prob: float = 0.0
    is_target_logit: bool = False
    run_idx: int = 0
    reverse_ctx_idx: int = 0
    jsNodeId: str
    clerp: str = ""
    influence: float | None = None
    activation: float | None = None
    influence_raw: float | None = None


class ViewerLink(BaseModel):
    source: str
    target: str
    weight: float


class ViewerGraph(BaseModel):
    metadata: ViewerMetadata
    qParams: ViewerQParams
    nodes: list[ViewerNode]
    links: list[ViewerLink]


def to_viewer_json(graph: Graph, pruned: PrunedGraph, *, slug: str | None = None,
                   scan: str | None = None, qparams: dict[str, Any] | None = None) -> dict[str, Any]:
    """The viewer graph JSON (as a dict) of the pruned graph; `qparams` (pinnedIds, supernodes,
    clickedId...) is the saved viewer state to carry along."""
    kept = [int(i) for i in pruned.node_mask.nonzero()[0]]
    cumulative = _cumulative_share(graph, pruned.node_influence)
    nodes = [_node(graph, i, cumulative[i], float(pruned.node_influence[i])) for i in kept]
    ids = {i: graph.node_id(i) for i in kept}
    targets, sources = pruned.edges()
    weights = graph.edge_weights(targets, sources)
    links = [
        ViewerLink(source=ids[int(s)], target=ids[int(t)], weight=float(w))
        for t, s, w in zip(targets, sources, weights)
    ]
    metadata = ViewerMetadata(
        slug=slug or _slug(graph.prompt),
        scan=scan or str(graph.transcoders.get("scan") or graph.model.get("name") or "custom"),
        prompt_tokens=graph.token_strs,
        prompt=graph.prompt,
        node_threshold=pruned.node_threshold,
        scores=compute_scores(graph, pruned),
        counts=pruned.counts(graph),
        thresholds={"node_threshold": pruned.node_threshold, "edge_threshold": pruned.edge_threshold},
        timing_seconds=graph.timing_seconds,
        model=graph.model,
        transcoders=graph.transcoders,
        generation_settings={k: v for k, v in graph.settings.items() if v is not None},
        pruning_settings={"node_threshold": pruned.node_threshold, "edge_threshold": pruned.edge_threshold},
    )
    doc = ViewerGraph(metadata=metadata, qParams=ViewerQParams(**(qparams or {})), nodes=nodes, links=links)
    doc = doc.model_dump(mode="json")
    add_attention_json(doc, graph, np.asarray(targets), np.asarray(sources))
    return doc


def write_viewer_json(graph: Graph, pruned: PrunedGraph, path: str | os.PathLike, *,
                      slug: str | None = None, scan: str | None = None) -> None:
    """Write the viewer graph JSON to `path`, atomically."""
    doc = to_viewer_json(graph, pruned, slug=slug, scan=scan)
    atomic_write_text(path, json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def _cumulative_share(graph: Graph, influence: np.ndarray) -> list[float | None]:
    """Per node: cumulative share among feature+error nodes ranked by influence; None otherwise."""
    inner = np.flatnonzero((graph.kind == NodeKind.FEATURE) | (graph.kind == NodeKind.ERROR))
    order = inner[np.argsort(-influence[inner], kind="stable")]
    cum = np.cumsum(influence[order])
    share: list[float | None] = [None] * graph.n_nodes
    for i, c in zip(order.tolist(), cum.tolist()):
        share[i] = c / cum[-1] if cum[-1] > 0 else 0.0
    return share


def _node(graph: Graph, i: int, cumulative: float | None, influence: float) -> ViewerNode:
    kind = NodeKind(int(graph.kind[i]))
    layer, pos = int(graph.layer[i]), int(graph.position[i])
    common = dict(node_id=graph.node_id(i), ctx_idx=pos, feature_type=FEATURE_TYPES[kind])
    if kind is NodeKind.FEATURE:
        feat = int(graph.feature[i])
        return ViewerNode(**common, feature=feature_json_index(layer, feat), layer=str(layer),
                          jsNodeId=f"{layer}_{feat}-0", clerp=graph.feature_labels.get(i, ""),
                          influence=cumulative, influence_raw=influence,
                          activation=float(graph.activation[i]))
    if kind is NodeKind.ERROR:
        return ViewerNode(**common, feature=-1, layer=str(layer), jsNodeId=f"{layer}_-1-{pos}",
                          influence=cumulative, influence_raw=influence)
    if kind is NodeKind.EMBEDDING:
        token = int(graph.token_id[i])
        return ViewerNode(**common, feature=pos, layer="E", jsNodeId=f"E_{token}-{pos}",
                          influence_raw=influence)
    j = i - graph.logit_slice.start
    vocab, prob = graph.logit_vocab_id(i), float(graph.logit_probabilities[j])
    return ViewerNode(**common, feature=vocab, layer=str(graph.n_layers + 1), token_prob=prob,
                      is_target_logit=j == 0, jsNodeId=f"L_{vocab}-{pos}",
                      clerp=f'Output "{graph.logit_labels[j]}" (p={prob:.3f})')


def feature_json_index(layer: int, feature: int) -> int:
    """A feature node's `feature` field: the Cantor pairing (l + f)(l + f + 1)/2 + f, one integer
    per (layer, feature); feature pages are exported as `{this}.json`."""
    return (layer + feature) * (layer + feature + 1) // 2 + feature


def _slug(prompt: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:48].strip("-")
    return slug or "graph"
