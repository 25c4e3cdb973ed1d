"""Writing an output file: atomically for regular files, through for special files.

A regular file is written to a temporary file beside it (named `.<name>.<pid>.<random>.circuits-tmp`),
fsynced and renamed over it: a reader never sees half a file, and a failed or killed write leaves the
old file whole. Through a symlink the link's target is replaced; the link stays. A special file
(/dev/stdout, a pipe, a device node) is opened for writing and written through, never replaced.
Temporary files of this naming whose process is gone are removed on the next write of the same file.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from safeio.errors import OutputError
from safeio.paths import check_output, is_special, real_target

TEMP_SUFFIX = ".circuits-tmp"


@contextlib.contextmanager
def open_output(path: str | os.PathLike, what: str = "output") -> Iterator[BinaryIO]:
    """Open `path` for writing (binary); on clean exit the written bytes are in place."""
    p = check_output(path, what)
    if is_special(p):
        with _write_through(p, what) as handle:
            yield handle
        return
    target = real_target(p)
    remove_stale_temps(target)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=TEMP_SUFFIX,
                                        dir=target.parent)
    except OSError as err:
        raise OutputError(f"cannot write {what} {p}: {err.strerror or err}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, _mode_for(target))
        os.replace(tmp_name, target)
    except OSError as err:
        _remove_quietly(tmp_name)
        raise OutputError(f"cannot write {what} {p}: {err.strerror or err}") from None
    except BaseException:
        _remove_quietly(tmp_name)
        raise
    fsync_dir(target.parent)


@contextlib.contextmanager
def _write_through(p: Path, what: str) -> Iterator[BinaryIO]:
    """Append to a special file (no create, no truncate): a regular file behind /dev/stdout keeps
    what the shell and this process already wrote to it."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    except OSError as err:
        raise OutputError(f"cannot write {what} {p}: {err.strerror or err}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
    except OSError as err:
        raise OutputError(f"cannot write {what} {p}: {err.strerror or err}") from None


def write_bytes(path: str | os.PathLike, data: bytes, what: str = "output") -> None:
    with open_output(path, what) as handle:
        handle.write(data)


def write_text(path: str | os.PathLike, text: str, what: str = "output") -> None:
    """Write `text` as UTF-8."""
    write_bytes(path, text.encode("utf-8"), what)


# temporary names of this package and of the checkpoint writer it replaced (both carry the pid)
_TEMP_PATTERNS = (r"\.{name}\.(\d+)\.[A-Za-z0-9_]+" + re.escape(TEMP_SUFFIX), r"\.{name}\.tmp-(\d+)")


def remove_stale_temps(target: str | os.PathLike) -> list[Path]:
    """Remove temporary files left beside `target` by killed writers (their pid no longer runs);
    returns the removed paths. A live writer's temporary file is kept."""
    target = Path(target)
    return _remove_matching(target.parent, re.escape(target.name), _TEMP_PATTERNS)


def remove_stale_temps_in(folder: str | os.PathLike) -> list[Path]:
    """Remove every stale temporary file of ours in `folder`, whatever output it was for (only
    names with our own suffix: an older writer's name alone does not prove the file is ours)."""
    return _remove_matching(Path(folder), r"[^/]+?", _TEMP_PATTERNS[:1])


def _remove_matching(folder: Path, name_pattern: str, templates: tuple[str, ...]) -> list[Path]:
    patterns = [re.compile(p.format(name=name_pattern) + r"\Z") for p in templates]
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = next((m for m in (pat.match(entry.name) for pat in patterns) if m), None)
        if match and entry.is_file(follow_symlinks=False) and not _alive(int(match.group(1))):
            _remove_quietly(entry.path)
            removed.append(Path(entry.path))
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers: this process writes one temporary file at a time
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename in `path` durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _mode_for(target: Path) -> int:
    """Keep an existing file's permissions; new files get rw-r--r-- (mkstemp makes rw-------)."""
    try:
        return target.stat().st_mode & 0o777
    except OSError:
        return 0o644 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_quietly(name: str | os.PathLike) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name)
