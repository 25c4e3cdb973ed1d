"""graphs: the attribution graph as data (nodes, adjacency, pruning, scores, formats).

numpy / scipy / pydantic / networkx only; no torch model code.
"""

from graphs.atomic import atomic_write_bytes, atomic_write_text
from graphs.errors import GraphError
from graphs.graph import Graph, NodeKind, make_node_table
from graphs.io import load_graph, save_graph
from graphs.neuronpedia import to_viewer_json, write_viewer_json
from graphs.prune import PrunedGraph, node_influence, prune_graph
from graphs.scores import compute_scores
from graphs.summary import format_summary, summarize

__all__ = [
    "Graph",
    "GraphError",
    "NodeKind",
    "PrunedGraph",
    "atomic_write_bytes",
    "atomic_write_text",
    "compute_scores",
    "format_summary",
    "load_graph",
    "make_node_table",
    "node_influence",
    "prune_graph",
    "save_graph",
    "summarize",
    "to_networkx",
    "to_viewer_json",
    "write_graphml",
    "write_viewer_json",
]


def __getattr__(name: str):
    """GraphML / networkx (a second of imports) load only when asked for."""
    if name in ("to_networkx", "write_graphml"):
        from graphs import graphml

        return getattr(graphml, name)
    raise AttributeError(f"module 'graphs' has no attribute {name!r}")
