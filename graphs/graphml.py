"""The pruned graph as a networkx DiGraph, and as GraphML for graph-analysis tools (Gephi,
Cytoscape, igraph). Nodes are keyed by their viewer node_id; edges run source -> target."""

from __future__ import annotations

import os

import networkx as nx

from graphs.atomic import atomic_open
from graphs.graph import Graph, NodeKind
from graphs.prune import PrunedGraph


def to_networkx(graph: Graph, pruned: PrunedGraph) -> nx.DiGraph:
    """Kept nodes with attributes kind, layer, position, feature, activation, token_id, label,
    influence (w^T B) and index (row in the full graph); kept edges with their weight."""
    digraph = nx.DiGraph(prompt=graph.prompt, node_threshold=pruned.node_threshold,
                         edge_threshold=pruned.edge_threshold)
    for i in pruned.node_mask.nonzero()[0].tolist():
        digraph.add_node(
            graph.node_id(i),
            kind=NodeKind(int(graph.kind[i])).name.lower(),
            layer=int(graph.layer[i]),
            position=int(graph.position[i]),
            feature=int(graph.feature[i]),
            activation=float(graph.activation[i]),
            token_id=int(graph.token_id[i]),
            label=graph.node_label(i),
            influence=float(pruned.node_influence[i]),
            index=i,
        )
    targets, sources = pruned.edges()
    for t, s, w in zip(targets.tolist(), sources.tolist(), graph.edge_weights(targets, sources).tolist()):
        digraph.add_edge(graph.node_id(s), graph.node_id(t), weight=float(w))
    return digraph


def write_graphml(graph: Graph, pruned: PrunedGraph, path: str | os.PathLike) -> None:
    """Write the pruned graph as GraphML to `path`, atomically."""
    digraph = to_networkx(graph, pruned)
    with atomic_open(path) as handle:
        nx.write_graphml(digraph, handle)
