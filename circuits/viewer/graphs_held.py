"""The graphs a viewer holds: opened from files the user named, or traced by the server.

A graph file is either our full graph (.npz, re-pruned from every edge) or a viewer graph JSON
(ours, circuit-tracer's, Neuronpedia's: re-pruned from the edges the file holds). Every request
for a pruned view recomputes pruning and scores from the held Graph.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from circuits.errors import CircuitsError
from graphs import Graph, NodeKind, load_graph, prune_graph, to_viewer_json
from graphs.thresholds import DEFAULT_EDGE_THRESHOLD, DEFAULT_NODE_THRESHOLD
from graphs.viewer_read import read_viewer_json

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


def open_graph_file(path: str | Path) -> tuple[Graph, dict[str, Any], str]:
    """(Graph, qParams, "npz"|"json") from a file the user named; one-line errors."""
    path = Path(path)
    if not path.exists():
        raise CircuitsError(f"no graph file at {path}")
    if path.is_dir():
        raise CircuitsError(f"{path} is a directory, not a graph file")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic.startswith(b"PK"):
        return load_graph(path), {}, "npz"
    graph, qparams = read_viewer_json(path)
    return graph, qparams, "json"


class GraphShelf:
    """Thread-safe dict of held graphs, in the order they were added."""

    def __init__(self) -> None:
        self._graphs: dict[str, HeldGraph] = {}
        self._lock = threading.Lock()

    def add(self, name: str, graph: Graph, qparams: dict[str, Any], source: str) -> HeldGraph:
        full = source != "json"
        with self._lock:
            gid = f"g{len(self._graphs)}"
            held = HeldGraph(gid, name, graph, qparams, DEFAULT_NODE_THRESHOLD if full else 1.0,
                             DEFAULT_EDGE_THRESHOLD if full else 1.0, source)
            self._graphs[gid] = held
        return held

    def get(self, gid: str) -> HeldGraph:
        with self._lock:
            if gid not in self._graphs:
                raise KeyError(gid)
            return self._graphs[gid]

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [h.summary() for h in self._graphs.values()]


def pruned_view(held: HeldGraph, node_threshold: float, edge_threshold: float) -> dict[str, Any]:
    """The viewer JSON of `held` pruned at the given thresholds (recomputed from the whole graph)."""
    for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 < value <= 1.0:
            raise CircuitsError(f"{name} must lie in (0, 1], got {value}")
    pruned = prune_graph(held.graph, node_threshold, edge_threshold)
    doc = to_viewer_json(held.graph, pruned, qparams=held.qparams)
    doc["metadata"]["viewer"] = {"graph_id": held.gid, "source": held.source}
    return doc


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

