"""graphs: the attribution graph as data (nodes, adjacency, pruning, scores, formats).

numpy / scipy / pydantic / networkx only; no torch model code. Names load on first use, so a
module that needs one name (or the CLI's --help) does not import scipy and networkx.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "atomic_write_bytes": "graphs.atomic", "atomic_write_text": "graphs.atomic",
    "GraphError": "graphs.errors",
    "Graph": "graphs.graph", "NodeKind": "graphs.graph", "make_node_table": "graphs.graph",
    "load_graph": "graphs.io", "save_graph": "graphs.io",
    "to_viewer_json": "graphs.neuronpedia", "write_viewer_json": "graphs.neuronpedia",
    "PrunedGraph": "graphs.prune", "node_influence": "graphs.prune", "prune_graph": "graphs.prune",
    "compute_scores": "graphs.scores",
    "format_summary": "graphs.summary", "summarize": "graphs.summary",
    "to_networkx": "graphs.graphml", "write_graphml": "graphs.graphml",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'graphs' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
