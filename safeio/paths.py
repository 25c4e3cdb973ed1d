"""Checks on output paths, made before any work: a file where a file is expected, a folder where a
folder is expected, parents that exist and are folders, a place that can really be written."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

from safeio.errors import OutputError

_SPECIAL_ROOTS = ("/dev/", "/proc/")


def link_chain(path: Path) -> list[Path]:
    """`path` and every symlink hop after it (absolute), stopping at a non-link or after 40 hops."""
    hops = [Path(os.path.abspath(path))]
    for _ in range(40):
        try:
            nxt = os.readlink(hops[-1])
        except OSError:
            break
        hops.append(Path(os.path.abspath(os.path.join(hops[-1].parent, nxt))))
    return hops


def is_special(path: Path) -> bool:
    """A path that must be written through, never replaced: a device node, a pipe, a socket, or
    anything reached through /dev or /proc (e.g. /dev/stdout, even when stdout is a regular file)."""
    if any(str(hop).startswith(_SPECIAL_ROOTS) for hop in link_chain(path)):
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def real_target(path: Path) -> Path:
    """The file a write to `path` lands in: symlinks followed (also dangling ones), folders resolved."""
    return Path(os.path.realpath(path))


def _check_parent(folder: Path, path: Path, what: str) -> None:
    """The folder that will hold `path` exists, is a folder, and accepts new files."""
    if folder.is_dir():
        try:
            fd, probe = tempfile.mkstemp(prefix=".circuits-write-probe.", dir=folder)
        except OSError as err:
            raise OutputError(f"cannot write {what} {path}: folder {folder} is not writable "
                              f"({err.strerror or err})") from None
        os.close(fd)
        os.unlink(probe)
        return
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise OutputError(f"cannot write {what} {path}: {ancestor} is a file, not a folder")
    raise OutputError(f"cannot write {what} {path}: folder {folder} does not exist")


def _check_reachable(path: Path, shown: Path, what: str) -> None:
    """A path the system cannot even look up: a name longer than the file system allows, a symlink
    loop (in the path or at its end). Missing files and folders are for the other checks."""
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ENAMETOOLONG:
            longest = max((len(part.encode("utf-8", "surrogateescape")) for part in path.parts), default=0)
            whole = len(os.fsencode(os.path.abspath(path)))
            size = f"a name of {longest} bytes; most allow 255" if longest > 255 else \
                f"the whole path has {whole} bytes; most systems allow 4096"
            raise OutputError(f"cannot write {what} {_cut(shown)}: the name is too long for the file system "
                              f"({size})") from None
        if err.errno == errno.ELOOP:
            raise OutputError(f"cannot write {what} {_cut(shown)}: it is a symlink loop (a link that "
                              "leads back to itself)") from None


def _cut(path: Path, room: int = 120) -> str:
    """A path short enough for one error line."""
    text = str(path)
    return text if len(text) <= room else f"{text[:room // 2]}...{text[-room // 2:]}"


def check_output(path: str | os.PathLike, what: str = "output") -> Path:
    """Check, before any work, that a file can be written at `path`; returns it as a Path.
    One-line OutputError saying what is wrong: a directory (or a name ending in '/'), a missing
    parent, a parent that is a file, a read-only file, a folder that refuses new files, a name too
    long for the file system, a symlink loop."""
    p = Path(path)
    if not str(path).strip():
        raise OutputError(f"{what} path is empty")
    _check_reachable(p, p, what)
    if is_special(p):
        if not os.path.exists(p) or not os.access(p, os.W_OK):
            raise OutputError(f"cannot write {what} {p}: it does not exist or is not writable")
        return p
    if p.is_dir():
        raise OutputError(f"cannot write {what} {p}: it is a directory")
    if os.fspath(path).endswith(("/", os.sep, "/.")):
        raise OutputError(f"cannot write {what} {path}: a name ending in '/' is a folder, and no folder "
                          "is there; give a file name")
    target = real_target(p)
    if target.is_dir():
        raise OutputError(f"cannot write {what} {p}: it is a directory")
    _check_reachable(target.parent, p, what)
    _check_parent(target.parent, p, what)
    _check_temp_fits(target, p, what)
    if target.exists() and not os.access(target, os.W_OK) and os.geteuid() != 0:
        raise OutputError(f"cannot write {what} {p}: the file is read-only")
    return p


def _check_temp_fits(target: Path, shown: Path, what: str) -> None:
    """The file's name itself fits the file system (its temporary name is shortened to fit)."""
    try:
        name_max = int(os.pathconf(target.parent, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return
    size = len(target.name.encode("utf-8", "surrogateescape"))
    if size > name_max:
        raise OutputError(f"cannot write {what} {_cut(shown)}: the name is too long for the file system "
                          f"({size} bytes; it allows {name_max})")


def check_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Check, before any work, that `path` is a folder (or can be made one, with its parents) that
    accepts new files; returns it as a Path. Nothing is created."""
    p = Path(path)
    if not str(path).strip():
        raise OutputError(f"{what} path is empty")
    if p.exists() and not p.is_dir():
        raise OutputError(f"{what} {p} is a file, not a folder")
    if p.is_dir():
        _check_parent(p, p, what)
        return p
    ancestor = p.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"cannot create {what} {p}: {ancestor} is a file, not a folder")
    _check_parent(ancestor, p, what)
    return p
