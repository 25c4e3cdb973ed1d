"""User-facing errors: one clear line, shown by the CLI without a traceback."""

from __future__ import annotations

import os


class CircuitsError(Exception):
    """An error caused by the user's input or environment, with a one-line message."""


def write_output(path: str | os.PathLike, data: bytes | str, what: str = "output") -> None:
    """Write `data` (str: UTF-8) to `path` through the one safe-write helper (safeio: atomic,
    symlinks and special files written through); a failure is a CircuitsError."""
    from safeio import OutputError, write_bytes

    try:
        write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data, what)
    except OutputError as err:
        raise CircuitsError(str(err)) from None
