"""Read a viewer graph JSON ({metadata, qParams, nodes, links}) back into a Graph.

Reads our own files (graphs/neuronpedia.py), circuit-tracer's and Neuronpedia's downloads. The
Graph holds exactly what the file holds: the file's nodes and its (already pruned) links as the
adjacency, so re-pruning it can only show less. Node ids:
- features "{layer}_{feature}_{pos}" (the feature index is the middle part: the `feature` field
  is an encoded id, Cantor or layer-offset, depending on the writer);
- errors: current circuit-tracer "{layer}_-1_{pos}", and the old form "0_{layer}_{pos}" (which
  could collide with a layer-0 feature id; a file where it does is refused, its links would be
  ambiguous); the node's `layer` and `ctx_idx` fields are what counts;
- embeddings "E_{token}_{pos}", logits "{n_layers + 1}_{vocab}_{pos}" (vocab also in `feature`).
Any problem -> GraphError with one line.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

from graphs.errors import GraphError
from graphs.graph import Graph, NodeKind, make_node_table

_KINDS = {
    "cross layer transcoder": NodeKind.FEATURE, "transcoder": NodeKind.FEATURE,
    "per layer transcoder": NodeKind.FEATURE, "mlp reconstruction error": NodeKind.ERROR,
    "embedding": NodeKind.EMBEDDING, "logit": NodeKind.LOGIT,
}
_LOGIT_LABEL = re.compile(r'^Output "(.*)" \(p=[^)]*\)$', re.S)
SCORE_NAMES = ("replacement", "completeness", "replacement_pruned", "completeness_pruned")


@dataclass
class ViewerFile:
    """What a viewer graph JSON holds: the Graph of its (pruned) nodes and links, its saved viewer
    state, and the scores its writer computed on the full graph (None where the file has none)."""
    graph: Graph
    qparams: dict[str, Any]
    scores: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(SCORE_NAMES))


def read_viewer_json(path: str | os.PathLike) -> tuple[Graph, dict[str, Any]]:
    """(Graph, qParams) from a viewer graph JSON file."""
    opened = read_viewer_file(path)
    return opened.graph, opened.qparams


def read_viewer_file(path: str | os.PathLike) -> ViewerFile:
    """The ViewerFile of a viewer graph JSON file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GraphError(f"no graph file at {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise GraphError(f"cannot read {path} ({type(err).__name__})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise GraphError(f"{path} is not valid JSON (truncated or damaged? {err.msg} at line {err.lineno})") from None
    try:
        return viewer_doc_to_file(doc)
    except GraphError as err:
        raise GraphError(f"{path}: {err}") from None


def viewer_doc_to_graph(doc: Any) -> tuple[Graph, dict[str, Any]]:
    """(Graph, qParams) from a parsed viewer graph JSON document."""
    opened = viewer_doc_to_file(doc)
    return opened.graph, opened.qparams


def viewer_doc_to_file(doc: Any) -> ViewerFile:
    """The ViewerFile of a parsed viewer graph JSON document."""
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list) or not isinstance(doc.get("links"), list):
        raise GraphError("not an attribution graph JSON (needs 'metadata', 'nodes' and 'links')")
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    try:
        nodes = [_parse_node(n) for n in doc["nodes"]]
    except (KeyError, TypeError, ValueError) as err:
        raise GraphError(f"a node is malformed ({type(err).__name__}: {err})") from None
    logits = [n for n in nodes if n["kind"] is NodeKind.LOGIT]
    if not logits:
        raise GraphError("the graph has no logit nodes")
    n_layers = logits[0]["layer"] - 1
    order = sorted(range(len(nodes)), key=lambda i: _sort_key(nodes[i]))
    nodes = [nodes[i] for i in order]
    index = _id_index(nodes)
    tokens = [str(t) for t in meta.get("prompt_tokens") or []]
    n_pos = max([len(tokens)] + [n["pos"] + 1 for n in nodes])
    tokens += [""] * (n_pos - len(tokens))
    token_ids = [-1] * n_pos
    for n in nodes:
        if n["kind"] is NodeKind.EMBEDDING:
            token_ids[n["pos"]] = n["token"]
    adjacency = _adjacency(doc["links"], index, len(nodes))
    by_kind = {k: [n for n in nodes if n["kind"] is k] for k in NodeKind}
    table = make_node_table(
        feature_layer_pos_feat=[[n["layer"], n["pos"], n["feature"]] for n in by_kind[NodeKind.FEATURE]],
        feature_activation=[n["activation"] for n in by_kind[NodeKind.FEATURE]],
        error_layer_pos=[[n["layer"], n["pos"]] for n in by_kind[NodeKind.ERROR]],
        embedding_token_ids=[],
        logit_token_ids=[n["token"] for n in by_kind[NodeKind.LOGIT]],
        n_layers=n_layers,
    )
    table = _with_embeddings(table, by_kind[NodeKind.EMBEDDING], n_layers)
    last_pos = max(n["pos"] for n in logits)
    table["position"][table["kind"] == NodeKind.LOGIT] = last_pos
    probs = [n["prob"] for n in by_kind[NodeKind.LOGIT]]
    graph = Graph(
        adjacency=adjacency, **table, logit_probabilities=probs,
        logit_weights=None if sum(probs) > 0 else [1.0 / len(probs)] * len(probs),
        logit_labels=[n["label"] for n in by_kind[NodeKind.LOGIT]],
        prompt=str(meta.get("prompt", "")), token_ids=token_ids, token_strs=tokens, n_layers=n_layers,
        model=_dict(meta.get("model")) or {"name": str(meta.get("scan", ""))},
        transcoders=_dict(meta.get("transcoders")),
        settings=_dict(meta.get("generation_settings")),
        feature_labels={i: n["label"] for i, n in enumerate(nodes)
                        if n["kind"] is NodeKind.FEATURE and n["label"]},
    )
    qparams = doc.get("qParams") if isinstance(doc.get("qParams"), dict) else {}
    return ViewerFile(graph, qparams, _file_scores(meta.get("scores")))


def _file_scores(value: Any) -> dict[str, float | None]:
    """The four scores of the file's metadata; a missing or non-numeric one is None."""
    scores = value if isinstance(value, dict) else {}
    out: dict[str, float | None] = {}
    for name in SCORE_NAMES:
        v = scores.get(name)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        out[name] = float(v) if ok else None
    return out


def _parse_node(n: dict) -> dict[str, Any]:
    kind_name, node_id, pos = str(n["feature_type"]), str(n["node_id"]), int(n["ctx_idx"])
    parts = node_id.split("_")
    if kind_name in _KINDS:
        kind = _KINDS[kind_name]
    elif len(parts) == 3 and all(p.lstrip("-").isdigit() for p in parts):
        kind = NodeKind.FEATURE  # another feature family ("{layer}_{index}_{pos}"), e.g. attention features
    else:
        raise ValueError(f"unknown feature_type {kind_name!r} of node {node_id!r}")
    out: dict[str, Any] = dict(id=node_id, kind=kind, pos=pos, feature=-1, token=-1, activation=0.0,
                               prob=0.0, label=str(n.get("clerp") or ""))
    if kind is NodeKind.FEATURE:
        out.update(layer=int(n["layer"]), feature=int(parts[1]), activation=float(n.get("activation") or 0.0))
    elif kind is NodeKind.ERROR:
        out.update(layer=int(n["layer"]))
    elif kind is NodeKind.EMBEDDING:
        out.update(layer=-1, token=int(parts[1]))
    else:
        match = _LOGIT_LABEL.match(out["label"])
        out.update(layer=int(n["layer"]), token=int(n.get("feature", parts[1])),
                   prob=float(n.get("token_prob") or 0.0), label=match.group(1) if match else out["label"])
    return out


def _sort_key(n: dict) -> tuple:
    """Graph order: features, errors, embeddings by (layer, position, feature); logits keep the
    file's order (the first is the target logit, then by probability)."""
    if n["kind"] is NodeKind.LOGIT:
        return (int(n["kind"]),)
    return (int(n["kind"]), n["layer"], n["pos"], n["feature"], n["token"])


def _id_index(nodes: list[dict]) -> dict[str, int]:
    index: dict[str, int] = {}
    for i, n in enumerate(nodes):
        if n["id"] in index:
            raise GraphError(f"two nodes share the id {n['id']} (an old-style error id colliding with a "
                             "feature id?); the links are ambiguous")
        index[n["id"]] = i
    return index


def _adjacency(links: list, index: dict[str, int], n: int) -> sparse.csr_array:
    """The links as a sparse square [n, n] (Graph keeps its targets x sources block); a link
    given twice keeps its last weight."""
    weights: dict[tuple[int, int], float] = {}
    for link in links:
        try:
            s, t, w = index[str(link["source"])], index[str(link["target"])], float(link["weight"])
        except KeyError as err:
            raise GraphError(f"a link names {err} which is no node of the graph") from None
        except (TypeError, ValueError):
            raise GraphError(f"a link is malformed: {str(link)[:120]}") from None
        weights[(t, s)] = w
    t_s = np.array(list(weights), dtype=np.int64).reshape(-1, 2)
    values = np.array(list(weights.values()), dtype=np.float32)
    return sparse.csr_array((values, (t_s[:, 0], t_s[:, 1])), shape=(n, n))


def _with_embeddings(table: dict[str, np.ndarray], embeddings: list[dict], n_layers: int) -> dict[str, np.ndarray]:
    """make_node_table puts one embedding per position; a pruned file holds only some: insert those."""
    is_logit = table["kind"] == NodeKind.LOGIT
    k = len(embeddings)
    insert = {
        "kind": np.full(k, NodeKind.EMBEDDING), "layer": np.full(k, -1),
        "position": np.array([e["pos"] for e in embeddings], dtype=np.int64), "feature": np.full(k, -1),
        "activation": np.zeros(k), "token_id": np.array([e["token"] for e in embeddings], dtype=np.int64),
    }
    return {name: np.concatenate([arr[~is_logit], insert[name].astype(arr.dtype), arr[is_logit]])
            for name, arr in table.items()}


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
