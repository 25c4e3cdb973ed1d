"""One writer per output folder: `folder_lock(out)` holds an exclusive lock on `out/.circuits-lock`
(flock) while a run writes there; a second run that asks for the same folder fails at once with one
line naming the holder's pid, instead of both saving into it.

- The lock file is ours (we create it, the lock is on it): it holds the holder's pid, and is removed
  when the holder lets go; a lock file left by a killed run is unlocked (the kernel releases a dead
  process's flock) and is simply taken over.
- A folder the lock had to create is removed again if the run left nothing else in it.
- Re-entrant within one process (the CLI takes the lock before loading the model, the trainer again
  around the run): flock would otherwise refuse the process its own lock on a second descriptor.
- flock is advisory and local: it guards our own writers on one machine (and on NFS where the
  kernel maps flock to NFS locks), not other programs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from safeio.errors import OutputError

LOCK_FILE = ".circuits-lock"
_held: dict[str, list] = {}  # real path of the folder -> [fd, depth, created folder?]


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "output folder") -> Iterator[Path]:
    """Hold the folder's lock for the `with` body (creating the folder if needed); OutputError if
    another process holds it."""
    path = Path(folder)
    key = os.path.realpath(path)
    if key in _held:
        _held[key][1] += 1
        try:
            yield path
        finally:
            _held[key][1] -= 1
        return
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create {what} {path}: {err.strerror or err}") from None
    fd = _acquire(path, what, created)
    _held[key] = [fd, 1, created]
    try:
        yield path
    finally:
        del _held[key]
        _release(path, fd, created)


def _acquire(folder: Path, what: str, created: bool) -> int:
    lock = folder / LOCK_FILE
    for _ in range(100):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as err:
            raise OutputError(f"cannot lock {what} {folder}: {err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read_pid(fd)
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputError(f"cannot lock {what} {folder}: {err.strerror or err}") from None
            if created:
                _remove_if_empty(folder)
            who = f"process {holder}" if holder else "another process"
            raise OutputError(f"{what} {folder} is in use: {who} is writing to it; wait for it to finish "
                              "or choose another folder") from None
        try:  # the holder we waited on may have removed the file after we opened it: lock the new one
            same = os.fstat(fd).st_ino == os.stat(lock, follow_symlinks=False).st_ino
        except OSError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)
    raise OutputError(f"cannot lock {what} {folder}: its lock file keeps changing")


def _release(folder: Path, fd: int, created: bool) -> None:
    with contextlib.suppress(OSError):
        os.unlink(folder / LOCK_FILE)  # while still locked: a waiting process re-checks the inode
    os.close(fd)
    if created:
        _remove_if_empty(folder)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def is_lock_file(name: str) -> bool:
    """Whether a folder entry is the lock file (not one of the user's files)."""
    return name == LOCK_FILE
