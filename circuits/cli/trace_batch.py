"""`circuits trace-batch PROMPTS --out DIR`: one graph per prompt, a manifest, resumable; under
torchrun the prompts are sharded over the ranks (`torchrun --nproc-per-node N -m circuits trace-batch`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from circuits.cli.common import DEVICE_OPTION, DTYPE_OPTION, console, pick_device, print_json
from circuits.cli.options import build_config, given, number_option, with_config_options
from circuits.attribution.config import TraceConfig


def load_on_ranks(model: str, transcoders: Path | None, device: str, dtype: str | None, info):
    """The ReplacementModel on every rank: rank 0 first (a built-in model or default transcoder is
    built on first use, once), then the others from the cache; a user error stops every rank."""
    from circuits.batch.sharding import agree, barrier
    from circuits.errors import CircuitsError
    from circuits.replacement.model import ReplacementModel
    from safeio import OutputError
    from transcoders.errors import TranscoderError

    rm, error = None, None
    if not info.is_main:
        barrier(info)
    try:
        rm = ReplacementModel.load(model, transcoders, device, progress=info.is_main, dtype=dtype)
    except (CircuitsError, TranscoderError, OutputError) as err:
        error = str(err)
    if info.is_main:
        barrier(info)
    agree(error is None, error or "", info)
    return rm


def leave(info) -> None:
    """Under torchrun: a final barrier, then leave without gloo's C++ teardown, which aborts a
    rank now and then at interpreter exit (tests/transcoders/test_distributed.py)."""
    from circuits.batch.sharding import barrier

    if info.enabled:
        barrier(info)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


@with_config_options(TraceConfig)
def trace_batch_cmd(
    prompts: Path = typer.Argument(..., help="Prompts: a text file (one per line) or .jsonl with prompt and "
                                   "optional target, contrast, id."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: graphs/ID.npz, graphs/ID.json, manifest.jsonl."),
    model: str = typer.Option("world", "--model", "-m", help="Built-in name, local checkpoint dir or hub id."),
    transcoders: Path = typer.Option(None, "--transcoders", "-t", help="Transcoder directory (default: the built-in "
                                     "model's default CLT)."),
    json_out: bool = typer.Option(False, "--json", help="Print the run's summary as JSON."),
    threads: int = number_option(None, "--threads", min=1, max=4096,
                                 help="torch threads per rank (default: torch's; torchrun sets 1). The graphs' last "
                                "float bits depend on it: pin it for byte-identical reruns."),
    batch_prompts: int = number_option(1, "--batch-prompts", min=1, max=4096,
                                       help="Prompts whose attribution rows share backward sweeps (graphs equal "
                                       "to 1e-6 relative, not bit for bit; docs/distributed.md says when it is faster)."),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    **settings,
) -> None:
    """Trace every prompt of PROMPTS into DIR (resumable: a rerun skips finished prompts). Under
    torchrun the prompts are sharded over the ranks and rank 0 writes the manifest."""
    from circuits.batch.inputs import read_prompts
    from circuits.batch.run import trace_batch
    from circuits.batch.sharding import join
    from circuits.batch.trace_many import check_items
    from safeio import check_output_dir

    items = read_prompts(prompts)
    check_output_dir(out)
    config = build_config(TraceConfig, given(TraceConfig, settings))
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    info, dev = join(pick_device(device))
    rm = load_on_ranks(model, transcoders, dev, dtype, info)
    check_items(rm, items, config)  # the same on every rank: all stop together
    summary = trace_batch(rm, items, out, config, progress=not json_out, info=info, batch_prompts=batch_prompts)
    if info.is_main:
        if json_out:
            print_json({**summary, "ranks": info.world_size})
        else:
            console.print(f"traced {summary['traced']} prompts, {summary['skipped']} already finished, "
                          f"on {info.world_size} rank(s); manifest: {summary['manifest']}")
    leave(info)


def register(app: typer.Typer) -> None:
    app.command("trace-batch")(trace_batch_cmd)
