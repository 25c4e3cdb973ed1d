"""Shared CLI helpers: printing JSON, the console, device choice, output checks, terminal-safe text,
the options every command shares."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import typer
from rich.console import Console

# Every Typer app: plain click help. Typer's rich help prints `<bool>` after every flag and cuts option
# syntax (`--freeze-attention/--no-fre…`) to fit 80 columns; click's wraps help text instead.
HELP = dict(rich_markup_mode=None)

# Options shared by the commands that take a built-in model and, optionally, its transcoders.
MODEL_OPTION = typer.Option("world", "--model", help="Model: built-in name, checkpoint dir or hub id.")
TRANSCODERS_OPTION = typer.Option(None, "--transcoders",
                                  help="Transcoder directory (default: the model's default CLT).")
DEVICE_OPTION = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")


def _dtype(value: str | None) -> str | None:
    """--dtype: float32, bfloat16 or float16 (fp32 / bf16 / fp16 too); anything else is one line."""
    import click

    from circuits.errors import CircuitsError
    from circuits.models.dtype import dtype_name

    try:
        return dtype_name(value)
    except CircuitsError:
        raise click.BadParameter(f"{value!r} is not one of float32, bfloat16, float16 (or fp32, bf16, fp16)",
                                 param_hint="'--dtype'") from None


DTYPE_OPTION = typer.Option("float32", "--dtype", parser=_dtype, metavar="[float32|bfloat16|float16]",
                            help="The model's weights and forward pass; attribution stays float32.")

class _Environ(Mapping):
    """os.environ, read live, but without a COLUMNS or LINES that is not a positive number (rich
    takes COLUMNS=0 as a width of 0 and prints nothing at all)."""

    def __getitem__(self, key: str) -> str:
        value = os.environ[key]
        if key in ("COLUMNS", "LINES") and not (value.isdigit() and int(value) > 0):
            raise KeyError(key)
        return value

    def __iter__(self):
        return iter(os.environ)

    def __len__(self) -> int:
        return len(os.environ)


# soft_wrap: rich never wraps what commands print (a pipe or a file gets whole lines at any width;
# a terminal wraps long lines itself)
console = Console(stderr=False, soft_wrap=True, _environ=_Environ())
err_console = Console(stderr=True, _environ=_Environ())


# Text that must not reach a terminal raw: C0/C1 controls (escape sequences, bell, newlines that
# would split the one error line) and the bidirectional overrides that reorder what is shown.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def one_line(text: str) -> str:
    """`text` with every control character shown as an escape (\\x1b, \\n, ...): safe to print."""
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def _output_file(flag: str):
    """Parser of an option naming an output file. A name ending in '/' names a folder: Path would
    drop the '/' and write a file of that name, so it is refused here, while the text is whole."""
    def parse(value: str) -> Path:
        import click

        if value.endswith(("/", os.sep)) and not os.path.isdir(value):
            raise click.BadParameter(f"{value!r} ends in '/', so it names a folder, and no folder is there; "
                                     "give a file name", param_hint=f"'{flag}'")
        return Path(value)
    return parse


def output_file_option(*decls: str, help: str) -> Any:
    """A typer option naming an output file (default none)."""
    return typer.Option(None, *decls, parser=_output_file(max(decls, key=len)), metavar="FILE", help=help)


def check_outputs(*outputs: Path | None, inputs: tuple[Path | None, ...] = ()) -> None:
    """Before any work: every output path can be written (safeio.check_output: not a directory,
    parent exists and is a folder, writable) and none is an input or another output."""
    from circuits.errors import CircuitsError
    from safeio import check_output

    given = [p for p in outputs if p is not None]
    for path in given:
        check_output(path)
    real = [os.path.realpath(p) for p in given]
    for path, target in zip(given, real):
        if real.count(target) > 1:
            raise CircuitsError(f"{path} is given as two outputs; give each output its own file")
        for source in (q for q in inputs if q is not None):
            if os.path.exists(source) and os.path.realpath(source) == target:
                raise CircuitsError(f"output {path} is also the input {source}: it would be overwritten; "
                                    "write to another file")


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
