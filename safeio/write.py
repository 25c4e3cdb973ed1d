"""Writing an output file: atomically for regular files, through for special files.

A regular file is written to a temporary file beside it, fsynced and renamed over it: a reader never
sees half a file, and a failed or killed write leaves the old file whole. Through a symlink the link's
target is replaced; the link stays. A special file (/dev/stdout, a pipe, a device node) is opened for
writing and written through, never replaced.

Temporary files a killed writer left behind are removed on the next write of the same file (and by
`remove_stale_temps_in` for a training folder), but only files that carry our mark, so that a
user's file that merely looks like one is never deleted. The mark is in the name:

    .<name>.<pid>.<token>.<tag>.circuits-tmp

`token` is 12 random hex digits and `tag` the first 12 hex digits of
sha256("safeio temporary\0<pid>\0<token>"): a name typed or made by hand (or by another tool) does
not carry a tag that matches its token. A file is removed only if its name carries a valid tag, it
is a regular file (not a link) owned by the user running the sweep, and the process `pid` no longer
runs. (A name is used, not an extended attribute, because a name survives every file system, copy
and archive tool; `<name>` is shortened so that the whole name fits the file system's limit.)
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import sys
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
        fd, tmp_name = _create_temp(target)
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


# --- temporary names: marked as ours (see the module docstring) ----------------------------------
_NAME_MAX = 255  # bytes, for the temporary name; os.pathconf refines it where it can
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<token>[0-9a-f]{12})\.(?P<tag>[0-9a-f]{12})"
                        + re.escape(TEMP_SUFFIX) + r"\Z", re.DOTALL)


def _tag(pid: int, token: str) -> str:
    return hashlib.sha256(f"safeio temporary\0{pid}\0{token}".encode()).hexdigest()[:12]


def _short_name(name: str, room: int) -> str:
    """`name` cut (whole characters) to at most `room` UTF-8 bytes."""
    data = name.encode("utf-8", "surrogateescape")
    return data[:max(room, 1)].decode("utf-8", "ignore") or "f"


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return _NAME_MAX


def temp_name(target_name: str, pid: int, token: str, name_max: int = _NAME_MAX) -> str:
    """The marked temporary name for writing `target_name` from process `pid` (token: 12 hex)."""
    tail = f".{pid}.{token}.{_tag(pid, token)}{TEMP_SUFFIX}"
    return "." + _short_name(target_name, name_max - 1 - len(tail)) + tail


def _create_temp(target: Path) -> tuple[int, str]:
    """A new marked temporary file beside `target` (mode rw-------), as (fd, path)."""
    name_max = _name_max(target.parent)
    for _ in range(100):
        path = target.parent / temp_name(target.name, os.getpid(), secrets.token_hex(6), name_max)
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600), str(path)
        except FileExistsError:
            continue
    raise OSError(errno.EEXIST, "no free temporary name")


def remove_stale_temps(target: str | os.PathLike) -> list[Path]:
    """Remove the marked temporary files that killed writers (their pid no longer runs) left beside
    `target`; returns the removed paths. A live writer's temporary file is kept."""
    target = Path(target)
    name_max = _name_max(target.parent)

    def for_target(name: str, temp: str) -> bool:  # `name` was shortened only in a name of full length
        return name == target.name or (target.name.startswith(name) and len(temp.encode()) > name_max - 4)
    return _remove_marked(target.parent, for_target)


def remove_stale_temps_in(folder: str | os.PathLike) -> list[Path]:
    """Remove every stale marked temporary file in `folder`, whatever output it was for."""
    return _remove_marked(Path(folder), lambda name, temp: True)


def _remove_marked(folder: Path, name_matches) -> list[Path]:
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or not name_matches(match["name"], entry.name) or not is_marked_temp(entry.name):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not entry.is_file(follow_symlinks=False) or st.st_uid != os.geteuid() or _alive(int(match["pid"])):
            continue
        _remove_quietly(entry.path)
        removed.append(Path(entry.path))
    return removed


def is_marked_temp(name: str) -> bool:
    """Whether `name` is a temporary name this package made (its tag matches its pid and token)."""
    match = _TEMP_NAME.match(name)
    return match is not None and match["tag"] == _tag(int(match["pid"]), match["token"])


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
