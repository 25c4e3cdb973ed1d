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
DEVICE_OPTION = typer.Option("auto", help="cpu, cuda or auto.")

console = Console(stderr=False)
err_console = Console(stderr=True)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")
    sys.stdout.flush()


def pick_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
