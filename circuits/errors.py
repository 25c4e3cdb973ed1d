"""User-facing errors: one clear line, shown by the CLI without a traceback."""


class CircuitsError(Exception):
    """An error caused by the user's input or environment, with a one-line message."""
