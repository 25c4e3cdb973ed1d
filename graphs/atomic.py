"""Atomic file writes: write a temporary file beside the target, then os.replace it.

A reader never sees a half-written file, and a failed write leaves nothing behind (the old file,
if any, stays as it was). An unwritable path raises GraphError with one line.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from graphs.errors import GraphError


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a binary temporary file beside `path`; on clean exit it replaces `path`."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise GraphError(f"cannot write {target}: it is a directory")
    if not folder.is_dir():
        raise GraphError(f"cannot write {target}: folder {folder} does not exist")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as err:
        raise GraphError(f"cannot write {target}: {err.strerror or err}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, _mode_for(target))
        os.replace(tmp_name, target)
    except OSError as err:
        _remove_quietly(tmp_name)
        raise GraphError(f"cannot write {target}: {err.strerror or err}") from None
    except BaseException:
        _remove_quietly(tmp_name)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_open(path) as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _mode_for(target: Path) -> int:
    """Keep an existing file's permissions; new files get rw-r--r-- (mkstemp makes rw-------)."""
    try:
        return target.stat().st_mode & 0o777
    except OSError:
        return 0o644


def _remove_quietly(name: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name)
