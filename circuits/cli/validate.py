"""`circuits validate [--n 30] [--json]`: graph predictions vs interventions over many prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from circuits.cli.common import DEVICE_OPTION, DTYPE_OPTION, MODEL_OPTION, TRANSCODERS_OPTION, console, err_console, pick_device, print_json
from circuits.attribution.config import TraceConfig
from circuits.cli.options import config_from, number_option, with_config_options

# the trace settings a study takes from the user (the study picks its own targets)
STUDY_TRACE_OPTIONS = dict(exclude=("targets", "contrast", "answer"))


@with_config_options(TraceConfig, **STUDY_TRACE_OPTIONS)
def validate_cmd(
    n: int = number_option(30, "--n", min=2, max=10_000, help="Prompts (half addition, half two-hop)."),
    top_k: int = number_option(10, "--top-k", min=2, max=10_000, help="Feature nodes ablated per prompt (by influence)."),
    swaps: int = number_option(20, "--swaps", min=0, max=10_000, help="Two-hop swap pairs."),
    k: int = number_option(20, "--k", min=1, max=1_000_000, help="State features removed / injected per swap side."),
    inhibit: float = number_option(-1.0, "--inhibit", kind=float, min=-1e6, max=1e6, help="Multiplier for the removed state features (0: ablate)."),
    inject_scale: float = number_option(4.0, "--inject-scale", kind=float, min=-1e6, max=1e6, help="Scale of the injected activations."),
    grid: bool = typer.Option(True, "--grid/--no-grid", help="Also run the swap for a grid of settings."),
    seed: int = number_option(0, "--seed", min=0, max=2**63 - 1, help="Seed for the generated prompts and pairs."),
    model: str = MODEL_OPTION,
    transcoders: Optional[Path] = TRANSCODERS_OPTION,
    json_out: bool = typer.Option(False, "--json", help="Print the tables (and every row) as JSON."),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    **options,
) -> None:
    """Spearman(graph influence, ablation effect), two-hop swap success rate, score table."""
    from circuits.replacement.model import ReplacementModel
    from circuits.studies.validate import format_validation, validate

    config = config_from(TraceConfig, options)
    rm = ReplacementModel.load(model, transcoders, pick_device(device), progress=not json_out, dtype=dtype)

    def progress(row):
        if not json_out:
            err_console.print(f"  traced {row.prompt!r}: spearman {row.spearman:.2f}", markup=False, highlight=False)

    result = validate(rm, n=n, seed=seed, top_k=top_k, n_swaps=swaps, k=k, inhibit=inhibit,
                      inject_scale=inject_scale, grid=grid, config=config,
                      progress=progress)
    if json_out:
        print_json(result.to_json())
    else:
        for line in format_validation(result):
            typer.echo(line)


def register(app: typer.Typer) -> None:
    if not any(c.name == "validate" for c in app.registered_commands):
        app.command("validate")(validate_cmd)
