"""Where the engine caches models and transcoders: $CIRCUITS_HOME (default ~/.cache/circuits)."""

from __future__ import annotations

import os
from pathlib import Path

from circuits.errors import CircuitsError


def circuits_home() -> Path:
    return Path(os.environ.get("CIRCUITS_HOME", Path.home() / ".cache" / "circuits")).expanduser()


def writable_dir(path: Path) -> Path:
    """Create `path` if needed and check it can be written; raise a one-line error if not."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-probe"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise CircuitsError(f"cannot write to {path}: {exc.strerror or exc}") from None
    return path


def models_dir() -> Path:
    return circuits_home() / "models"


def transcoders_dir() -> Path:
    return circuits_home() / "transcoders"
