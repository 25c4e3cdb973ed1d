"""Resumable training checkpoints: one safetensors file, written atomically.

`checkpoint.safetensors` holds every tensor a run needs to continue bit-for-bit (transcoder
parameters, Adam moments, normalisation scales, dead-feature trackers, RNG state) and, as JSON in
the safetensors metadata, the configs, the step and the shuffle buffer's position. It is written to
a temporary file, fsynced and renamed over the old one, so a kill -9 at any moment leaves either
the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from transcoders.errors import TranscoderError

CHECKPOINT_FILE = "checkpoint.safetensors"
FORMAT_VERSION = "1"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` with the shared safe-write helper (safeio), as a TranscoderError."""
    from safeio import OutputError, write_bytes

    try:
        write_bytes(path, data)
    except OutputError as err:
        raise TranscoderError(str(err)) from None


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """tensors: name -> tensor (any dtype); meta: JSON-serialisable values."""
    from safetensors.torch import save

    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {k: json.dumps(v) for k, v in meta.items()}
    metadata["format_version"] = json.dumps(FORMAT_VERSION)
    atomic_write_bytes(Path(path), save(flat, metadata=metadata))


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = {k: json.loads(v) for k, v in metadata.items()}
    except (OSError, SafetensorError, json.JSONDecodeError, ValueError) as exc:
        raise TranscoderError(f"checkpoint {path} is unreadable ({type(exc).__name__}); "
                              "start again with --overwrite") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise TranscoderError(f"checkpoint {path} has an unknown format version")
    return tensors, meta


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    """Adam state as flat tensors + param_groups (JSON)."""
    sd = opt.state_dict()
    flat = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            flat[f"optim.{idx}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return flat, sd["param_groups"]


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], param_groups: list) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": param_groups})
