"""Shared CLI helpers: printing JSON, the console, device choice, the options every command shares."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console

# Options shared by the commands that take a built-in model and, optionally, its transcoders.
MODEL_OPTION = typer.Option("world", "--model", help="Model: built-in name, checkpoint dir or hub id.")
TRANSCODERS_OPTION = typer.Option(None, "--transcoders",
                                  help="Transcoder directory (default: the model's default CLT).")
DEVICE_OPTION = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")

console = Console(stderr=False)
err_console = Console(stderr=True)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")
    sys.stdout.flush()


def pick_device(device: str | None) -> str:
    """The torch device for --device: auto (cuda if there is one, else cpu), cpu, cuda or cuda:N;
    anything else, or a CUDA device this machine does not have, is one line."""
    import re

    import torch

    from circuits.errors import CircuitsError

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    m = re.fullmatch(r"cuda(?::(\d+))?", device)
    if m is None:
        raise CircuitsError(f"--device must be auto, cpu, cuda or cuda:N (got {device!r})")
    if not torch.cuda.is_available():
        raise CircuitsError(f"--device {device}: no CUDA device is available on this machine (use --device cpu)")
    if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
        raise CircuitsError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device
