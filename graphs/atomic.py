"""Atomic graph-file writes, through the shared safe-write helper (safeio), with GraphError.

A reader never sees a half-written file; a failed write leaves the old file as it was; a symlink
or a special file (/dev/stdout) is written through, never replaced. See safeio for the rules.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import BinaryIO

from graphs.errors import GraphError
from safeio import OutputError, open_output


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open `path` for a binary write; on clean exit the bytes are in place."""
    try:
        with open_output(path) as handle:
            yield handle
    except OutputError as err:
        raise GraphError(str(err)) from None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_open(path) as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))
