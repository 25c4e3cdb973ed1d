"""The graphs a viewer holds: opened from files the user named, or traced by the server.

A graph file is either our full graph (.npz, re-pruned from every edge) or a viewer graph JSON
(ours, circuit-tracer's, Neuronpedia's: re-pruned from the edges the file holds). Every request
for a pruned view recomputes pruning from the held Graph.

Scores: a full graph's are recomputed at every pruning. A JSON holds only a pruned graph (often no
error nodes), so scores recomputed from it would be scores of the file's graph, not of the traced
one: the view shows the scores the file's metadata carries (full, and pruned as written), and when
the sliders show less than the file, the view's scores relative to the file's own graph, labelled so.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from circuits.errors import CircuitsError
from graphs import Graph, GraphError, NodeKind, compute_scores, load_graph, prune_graph, to_viewer_json
from graphs.thresholds import DEFAULT_EDGE_THRESHOLD, DEFAULT_NODE_THRESHOLD
from graphs.viewer_read import SCORE_NAMES, check_qparams, check_regular_file, read_viewer_file

N_NEIGHBOURS = 25  # strongest input and output edges listed per node


@dataclass
class HeldGraph:
    gid: str
    name: str
    graph: Graph
    qparams: dict[str, Any]
    node_threshold: float  # defaults for the sliders
    edge_threshold: float
    source: str  # "npz", "json" or "traced"
    file_scores: dict[str, float | None] | None = None  # a JSON's metadata scores (source "json")
    _ids: dict[str, int] = field(default_factory=dict)

    def index_of(self, node_id: str) -> int:
        if not self._ids:
            self._ids = {self.graph.node_id(i): i for i in range(self.graph.n_nodes)}
        if node_id not in self._ids:
            raise KeyError(node_id)
        return self._ids[node_id]

    def summary(self) -> dict[str, Any]:
        return {"id": self.gid, "name": self.name, "prompt": self.graph.prompt, "source": self.source,
                "n_nodes": self.graph.n_nodes, "node_threshold": self.node_threshold,
                "edge_threshold": self.edge_threshold}


@dataclass
class OpenedGraph:
    graph: Graph
    qparams: dict[str, Any]
    source: str  # "npz" | "json"
    file_scores: dict[str, float | None] | None = None  # the JSON's metadata scores


def open_graph_file(path: str | Path) -> OpenedGraph:
    """The graph in a file the user named; one-line errors. A FIFO or device is refused before it
    is opened (opening a FIFO blocks until a writer comes)."""
    path = Path(path)
    check_regular_file(path)
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic.startswith(b"PK"):
        return OpenedGraph(load_graph(path), {}, "npz")
    opened = read_viewer_file(path)
    return OpenedGraph(opened.graph, opened.qparams, "json", opened.scores)


class GraphShelf:
    """Thread-safe dict of held graphs, in the order they were added."""

    def __init__(self) -> None:
        self._graphs: dict[str, HeldGraph] = {}
        self._lock = threading.Lock()

    def add(self, name: str, graph: Graph, qparams: dict[str, Any], source: str,
            file_scores: dict[str, float | None] | None = None) -> HeldGraph:
        full = source != "json"
        with self._lock:
            gid = f"g{len(self._graphs)}"
            held = HeldGraph(gid, name, graph, qparams, DEFAULT_NODE_THRESHOLD if full else 1.0,
                             DEFAULT_EDGE_THRESHOLD if full else 1.0, source,
                             file_scores if source == "json" else None)
            self._graphs[gid] = held
        return held

    def open(self, path: str | Path) -> HeldGraph:
        """Open the graph file at `path` and hold it under its file name."""
        opened = open_graph_file(path)
        return self.add(Path(path).name, opened.graph, opened.qparams, opened.source, opened.file_scores)

    def get(self, gid: str) -> HeldGraph:
        with self._lock:
            if gid not in self._graphs:
                raise KeyError(gid)
            return self._graphs[gid]

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [h.summary() for h in self._graphs.values()]


def checked_qparams(held: HeldGraph, body: dict[str, Any], max_chars: int) -> dict[str, Any]:
    """The qParams fields of a request body, checked against the graph schema, each string at most
    `max_chars` long, every pinned or grouped id a node of `held` (clickedId may name a node or a
    supernode of the page); CircuitsError naming the first problem."""
    unknown = sorted(set(body) - {"pinnedIds", "supernodes", "linkType", "clickedId", "sg_pos"})
    if unknown:
        raise CircuitsError(f"unknown qParams field {unknown[0][:60]!r} (pinnedIds, supernodes, linkType, "
                            "clickedId, sg_pos)")
    try:
        check_qparams(body)
    except GraphError as err:
        raise CircuitsError(str(err)) from None
    for name in ("linkType", "clickedId", "sg_pos"):
        if len(body.get(name, "")) > max_chars:
            raise CircuitsError(f"qParams.{name} is too long ({len(body[name])} characters, at most {max_chars})")
    supernodes = body.get("supernodes", [])
    if any(len(s) < 2 or len(s[0]) > max_chars for s in supernodes):
        raise CircuitsError(f"each supernode is [name, node_id, ...] with a name of at most {max_chars} characters")
    named = body.get("pinnedIds", []) + [x for s in supernodes for x in s[1:]]
    if len(named) > 4 * held.graph.n_nodes:
        raise CircuitsError(f"qParams names {len(named)} nodes; the graph has {held.graph.n_nodes}")
    for node_id in named:
        try:
            held.index_of(node_id)
        except KeyError:
            raise CircuitsError(f"unknown node id {node_id[:80]!r} in graph {held.gid}") from None
    return body


def pruned_view(held: HeldGraph, node_threshold: float, edge_threshold: float) -> dict[str, Any]:
    """The viewer JSON of `held` pruned at the given thresholds (recomputed from the whole graph)."""
    for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 < value <= 1.0:
            raise CircuitsError(f"{name} must lie in (0, 1], got {value}")
    pruned = prune_graph(held.graph, node_threshold, edge_threshold)
    doc = to_viewer_json(held.graph, pruned, qparams=held.qparams)
    doc["metadata"]["viewer"] = {"graph_id": held.gid, "source": held.source, **_scores_basis(held, pruned, doc)}
    return doc


def _scores_basis(held: HeldGraph, pruned, doc: dict[str, Any]) -> dict[str, Any]:
    """How the view's scores were found (and, for a JSON, the file's scores put in the doc)."""
    if held.source != "json":
        return {"scores_basis": "recomputed", "scores_within_file": None,
                "scores_note": "scores recomputed from every edge of the full graph"}
    file_scores = held.file_scores or dict.fromkeys(SCORE_NAMES)
    as_written = bool(pruned.node_mask.all()) and len(doc["links"]) == held.graph.n_edges()
    doc["metadata"]["scores"] = {
        "replacement": file_scores["replacement"], "completeness": file_scores["completeness"],
        "replacement_pruned": file_scores["replacement_pruned"] if as_written else None,
        "completeness_pruned": file_scores["completeness_pruned"] if as_written else None,
    }
    has_scores = any(v is not None for v in file_scores.values())
    note = ("scores from the file's metadata" if has_scores else "the file carries no scores") + \
        " (a graph JSON holds only its pruned graph: full-graph scores cannot be recomputed from it)"
    within = None
    if not as_written:
        recomputed = compute_scores(held.graph, pruned)
        within = {"replacement": recomputed["replacement_pruned"],
                  "completeness": recomputed["completeness_pruned"]}
        note += ("; this view shows less than the file: its scores within the file are recomputed "
                 "from the JSON's edges, counting what it drops from the file's graph as error")
    return {"scores_basis": "file", "scores_within_file": within, "scores_note": note}


def node_details(held: HeldGraph, node_id: str) -> dict[str, Any]:
    """A node and its strongest inputs and outputs in the whole graph (not only the pruned view)."""
    g = held.graph
    i = held.index_of(node_id)
    kind = NodeKind(int(g.kind[i]))
    inputs, outputs = g.incoming(i), g.outgoing(i)  # float32 [n_nodes] each

    def edges(weights: np.ndarray) -> list[dict[str, Any]]:
        nz = np.flatnonzero(weights)
        top = nz[np.argsort(-np.abs(weights[nz]), kind="stable")][:N_NEIGHBOURS]
        return [{"node_id": g.node_id(int(j)), "label": g.node_label(int(j)), "weight": float(weights[j])}
                for j in top]

    return {"node_id": node_id, "kind": kind.name.lower(), "layer": int(g.layer[i]),
           "position": int(g.position[i]), "token": g.token_strs[int(g.position[i])] if g.n_pos else "",
           "label": g.node_label(i), "activation": float(g.activation[i]) if kind is NodeKind.FEATURE else None,
           "feature": int(g.feature[i]) if kind is NodeKind.FEATURE else None,
           "inputs": edges(inputs), "outputs": edges(outputs),
           "n_inputs": int(np.count_nonzero(inputs)), "n_outputs": int(np.count_nonzero(outputs))}

