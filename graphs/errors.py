"""User-facing errors of the graph package."""


class GraphError(Exception):
    """Bad graph input (unreadable file, bad thresholds, ...): one clear line."""
