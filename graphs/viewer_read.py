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
Any problem -> GraphError with one line: a file that is not regular (a FIFO: checked before it is
opened), JSON nested deeper than MAX_JSON_DEPTH, a `metadata` or `qParams` that is not an object
(qParams fields typed as the graph schema types them), a node id not of its kind's form.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
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
# node_id forms by kind (error ids: "{layer}_-1_{pos}", or the old "0_{layer}_{pos}")
_ID_FORMS = {
    NodeKind.FEATURE: re.compile(r"^-?\d+_\d+_\d+$"), NodeKind.ERROR: re.compile(r"^-?\d+_-?\d+_\d+$"),
    NodeKind.EMBEDDING: re.compile(r"^E_-?\d+_\d+$"), NodeKind.LOGIT: re.compile(r"^-?\d+_-?\d+_\d+$"),
}
_ID_SHOWN = {NodeKind.FEATURE: "{layer}_{feature}_{pos}", NodeKind.ERROR: "{layer}_-1_{pos}",
             NodeKind.EMBEDDING: "E_{token}_{pos}", NodeKind.LOGIT: "{layer}_{vocab}_{pos}"}
SCORE_NAMES = ("replacement", "completeness", "replacement_pruned", "completeness_pruned")
MAX_POSITIONS, MAX_LAYERS = 1_000_000, 10_000  # bounds on a node's ctx_idx and layer
MAX_JSON_DEPTH = 16  # a graph JSON nests 4 levels (metadata.scores, qParams.supernodes[i]); more is not ours
QPARAM_TYPES = {"pinnedIds": "a list of node ids", "supernodes": "a list of [name, node_id, ...] lists",
                "linkType": "a string", "clickedId": "a string", "sg_pos": "a string"}


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
    check_regular_file(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GraphError(f"no graph file at {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise GraphError(f"cannot read {path} ({type(err).__name__})") from None
    too_deep = f"{path} is nested too deeply for a graph JSON (more than {MAX_JSON_DEPTH} levels)"
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise GraphError(f"{path} is not valid JSON (truncated or damaged? {err.msg} at line {err.lineno})") from None
    except RecursionError:
        raise GraphError(too_deep) from None
    if json_depth(doc) > MAX_JSON_DEPTH:
        raise GraphError(too_deep)
    try:
        return viewer_doc_to_file(doc)
    except GraphError as err:
        raise GraphError(f"{path}: {err}") from None


def check_regular_file(path: Path) -> None:
    """A graph file must be a regular file: a FIFO, a device or a socket would block or never end,
    so its type is checked before it is opened."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise GraphError(f"no graph file at {path}") from None
    except OSError as err:
        raise GraphError(f"cannot read {path} ({err.strerror or type(err).__name__})") from None
    if stat.S_ISDIR(mode):
        raise GraphError(f"{path} is a directory, not a graph file")
    if not stat.S_ISREG(mode):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a device or socket"
        raise GraphError(f"{path} is {kind}, not a regular graph file")


def json_depth(value: Any) -> int:
    """How deeply `value` (parsed JSON) nests lists and objects (a scalar: 0), without recursion."""
    depth, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            depth = max(depth, level)
            stack.extend((x, level + 1) for x in item if isinstance(x, (list, dict)))
    return depth


def check_qparams(qparams: Any) -> dict[str, Any]:
    """qParams as the graph schema types them (every field optional; ours: supernodes are
    [name, node_id, ...] lists); GraphError naming the first field that is not."""
    if not isinstance(qparams, dict):
        raise GraphError("qParams must be an object")
    for name, value in qparams.items():
        if name not in QPARAM_TYPES:
            continue  # the schema allows more fields; they are kept as they are
        if name == "pinnedIds":
            ok = isinstance(value, list) and all(isinstance(x, str) for x in value)
        elif name == "supernodes":
            ok = isinstance(value, list) and all(
                isinstance(s, list) and len(s) >= 1 and all(isinstance(x, str) for x in s) for s in value)
        else:
            ok = isinstance(value, str)
        if not ok:
            raise GraphError(f"qParams.{name} must be {QPARAM_TYPES[name]}")
    return qparams


def viewer_doc_to_graph(doc: Any) -> tuple[Graph, dict[str, Any]]:
    """(Graph, qParams) from a parsed viewer graph JSON document."""
    opened = viewer_doc_to_file(doc)
    return opened.graph, opened.qparams


def viewer_doc_to_file(doc: Any) -> ViewerFile:
    """The ViewerFile of a parsed viewer graph JSON document."""
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list) or not isinstance(doc.get("links"), list):
        raise GraphError("not an attribution graph JSON (needs 'metadata', 'nodes' and 'links')")
    meta = doc.get("metadata", {})
    if not isinstance(meta, dict):
        raise GraphError(f"'metadata' must be an object, not {_json_kind(meta)}")
    if not isinstance(doc.get("qParams", {}), dict):
        raise GraphError(f"'qParams' must be an object, not {_json_kind(doc['qParams'])}")
    qparams = check_qparams(doc.get("qParams", {}))
    nodes = []
    for i, n in enumerate(doc["nodes"]):
        try:
            nodes.append(_parse_node(n))
        except (KeyError, TypeError, ValueError) as err:
            shown = str(n.get("node_id"))[:60] if isinstance(n, dict) else str(n)[:60]
            reason = f"missing field {err}" if isinstance(err, KeyError) else str(err)
            raise GraphError(f"node {i} ({shown!r}) is malformed: {reason}") from None
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


def _parse_node(n: Any) -> dict[str, Any]:
    if not isinstance(n, dict):
        raise TypeError(f"a node must be an object, not {_json_kind(n)}")
    kind_name, node_id, pos = str(n["feature_type"]), str(n["node_id"]), int(n["ctx_idx"])
    parts = node_id.split("_")
    if kind_name in _KINDS:
        kind = _KINDS[kind_name]
    elif _ID_FORMS[NodeKind.FEATURE].match(node_id):
        kind = NodeKind.FEATURE  # another feature family ("{layer}_{index}_{pos}"), e.g. attention features
    else:
        raise ValueError(f"unknown feature_type {kind_name!r}")
    if not _ID_FORMS[kind].match(node_id):
        raise ValueError(f"its node_id is not of the form {_ID_SHOWN[kind]}")
    if not 0 <= pos < MAX_POSITIONS:
        raise ValueError(f"ctx_idx {pos} is not a position (0 .. {MAX_POSITIONS - 1})")
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
    if not -1 <= out["layer"] < MAX_LAYERS:
        raise ValueError(f"layer {out['layer']} is not a layer (0 .. {MAX_LAYERS - 1})")
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


def _json_kind(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return "null" if value is None else "true/false"
    return {str: "a string", list: "a list", int: "a number", float: "a number"}.get(type(value), "an object")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
