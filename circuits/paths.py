"""Where the engine caches models and transcoders: $CIRCUITS_HOME (default ~/.cache/circuits)."""

from __future__ import annotations

import os
from pathlib import Path

from circuits.errors import CircuitsError


def circuits_home() -> Path:
    """$CIRCUITS_HOME, or ~/.cache/circuits when it is unset. Set but empty is refused: it would
    silently mean the current folder."""
    value = os.environ.get("CIRCUITS_HOME")
    if value is None:
        return Path.home() / ".cache" / "circuits"
    if not value.strip():
        raise CircuitsError("CIRCUITS_HOME is set but empty: unset it to use ~/.cache/circuits, "
                            "or set it to a folder")
    return Path(value).expanduser()


def writable_dir(path: Path) -> Path:
    """Create `path` if needed and check it can be written; raise a one-line error if not."""
    from safeio import OutputError, check_output_dir

    try:
        check_output_dir(path, "folder")
        path.mkdir(parents=True, exist_ok=True)
    except OutputError as exc:
        raise CircuitsError(f"{exc} (cache under $CIRCUITS_HOME)") from None
    except OSError as exc:
        raise CircuitsError(f"cannot write to {path}: {exc.strerror or exc}") from None
    return path


def models_dir() -> Path:
    return circuits_home() / "models"


def transcoders_dir() -> Path:
    return circuits_home() / "transcoders"


def checked_weights_dir() -> Path:
    """Stamps of transcoder files whose weights were found finite (transcoders/weights_check.py)."""
    return circuits_home() / "checked-weights"
