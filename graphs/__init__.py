"""graphs: the attribution graph as data (nodes, adjacency, pruning, scores, formats).

numpy / scipy / pydantic / networkx only; no torch model code.
"""

from graphs.errors import GraphError

__all__ = ["GraphError"]
