"""The one error of safeio: an output path that cannot (or must not) be written, in one line."""


class OutputError(Exception):
    """An output path of the wrong kind, in a missing or unwritable folder, or a failed write."""
