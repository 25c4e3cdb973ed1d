"""The pruning thresholds: their defaults and their one range check (standard library only, so the
CLI can build its options without importing numpy)."""

from __future__ import annotations

from graphs.errors import GraphError

DEFAULT_NODE_THRESHOLD = 0.8  # keep the feature/error nodes holding this share of influence
DEFAULT_EDGE_THRESHOLD = 0.98  # keep the edges holding this share of edge score


def check_threshold(name: str, value: float) -> float:
    """`value` if it is a share in (0, 1] (0 would keep nothing), else a one-line GraphError."""
    if not (isinstance(value, (int, float)) and 0.0 < value <= 1.0):
        raise GraphError(f"{name} must lie in (0, 1], got {value}")
    return float(value)
