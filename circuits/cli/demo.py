"""`circuits demo addition|two-hop|capitals|capitals-two-hop|attention-*`: the case studies, with verdicts.

addition and two-hop run on the `world` organism; capitals and capitals-two-hop on a real model
(default smollm2-135m) or a world organism (US states)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from circuits.attribution.config import TraceConfig
from circuits.cli.common import DEVICE_OPTION, DTYPE_OPTION, HELP, MODEL_OPTION, TRANSCODERS_OPTION, pick_device, print_json
from circuits.cli.options import config_from, number_option, with_config_options
from circuits.cli.validate import STUDY_TRACE_OPTIONS

app = typer.Typer(**HELP, help="Case studies: trace, explain and intervene, ending in a verdict per experiment.",
                  no_args_is_help=True)

JSON = typer.Option(False, "--json", help="Print the report as JSON.")


def _print(lines: list[str]) -> None:
    for line in lines:
        typer.echo(line)


@app.command("addition")
@with_config_options(TraceConfig, **STUDY_TRACE_OPTIONS)
def addition_cmd(
    a: int = number_option(36, "--a", min=10, max=99, help="First operand."),
    b: int = number_option(59, "--b", min=10, max=99, help="Second operand."),
    multiplier: float = number_option(-1.0, "--multiplier", kind=float, min=-1e6, max=1e6, help="Inhibition: scale the chosen features by this."),
    top: int = number_option(15, "--top", min=1, max=10_000, help="Feature nodes to show and classify."),
    model: str = MODEL_OPTION, transcoders: Optional[Path] = TRANSCODERS_OPTION, json_out: bool = JSON,
    device: str = DEVICE_OPTION, dtype: str = DTYPE_OPTION, **options,
) -> None:
    """Trace "calc: A+B=", show the paths to the sum by position and role, run inhibition experiments."""
    from circuits.studies.demos.addition import format_addition, run_addition_demo
    from circuits.replacement.model import ReplacementModel

    config = config_from(TraceConfig, options)
    rm = ReplacementModel.load(model, transcoders, pick_device(device), progress=not json_out, dtype=dtype)
    report = run_addition_demo(rm, a, b, top=top, multiplier=multiplier, config=config)
    print_json(report.to_json()) if json_out else _print(format_addition(report))


@app.command("two-hop")
@with_config_options(TraceConfig, **STUDY_TRACE_OPTIONS)
def two_hop_cmd(
    k: int = number_option(20, "--k", min=1, max=1_000_000, help="State features removed / injected per swap side."),
    inhibit: float = number_option(-1.0, "--inhibit", kind=float, min=-1e6, max=1e6, help="Multiplier for the removed state features (0: ablate)."),
    inject_scale: float = number_option(4.0, "--inject-scale", kind=float, min=-1e6, max=1e6, help="Scale of the injected activations."),
    model: str = MODEL_OPTION, transcoders: Optional[Path] = TRANSCODERS_OPTION, json_out: bool = JSON,
    device: str = DEVICE_OPTION, dtype: str = DTYPE_OPTION, **options,
) -> None:
    """Kobe Bryant -> California -> Sacramento and Dallas -> Texas -> Austin: find, inhibit and swap state features."""
    from circuits.replacement.model import ReplacementModel
    from circuits.studies.demos.two_hop import format_two_hop, run_two_hop_demo

    config = config_from(TraceConfig, options)
    rm = ReplacementModel.load(model, transcoders, pick_device(device), progress=not json_out, dtype=dtype)
    report = run_two_hop_demo(rm, k=k, inhibit=inhibit, inject_scale=inject_scale, config=config)
    print_json(report.to_json()) if json_out else _print(format_two_hop(report))


@app.command("attention-two-hop")
def attention_two_hop_cmd(
    qk_heads: int = number_option(8, "--qk-heads", min=1, max=10_000, help="Heads explained in the traced graph."),
    model: str = MODEL_OPTION, transcoders: Optional[Path] = TRANSCODERS_OPTION, json_out: bool = JSON,
    device: str = DEVICE_OPTION, dtype: str = DTYPE_OPTION,
) -> None:
    """Dallas -> Texas -> Austin: which heads move the state from " Dallas" to the last position, what on
    the query side makes them look there, and what removing that query-side feature does to the head."""
    from circuits.studies.demos.attention_two_hop import format_attention_two_hop, run_attention_two_hop
    from circuits.replacement.model import ReplacementModel

    setup = ReplacementModel.load(model, transcoders, pick_device(device), progress=not json_out, dtype=dtype)
    report = run_attention_two_hop(setup, qk_heads=qk_heads)
    print_json(report.to_json()) if json_out else _print(format_attention_two_hop(report))


REAL_MODEL_OPTION = typer.Option("smollm2-135m", "--model", help="Model: built-in name, checkpoint dir or hub id.")
REAL_TRANSCODERS_OPTION = typer.Option(
    None, "--transcoders", help="Transcoder directory (default: the model's default transcoder in the cache; "
    "the world organisms train theirs on first use).")


def load_demo_setup(model: str, transcoders: Optional[Path], device: str, progress: bool):
    """The model and its transcoders; a real model's default transcoder must already be trained
    (an hour of CPU), a world organism's trains on first use (minutes)."""
    from circuits.errors import CircuitsError
    from circuits.replacement.model import ReplacementModel

    if transcoders is None and not model.startswith("world"):
        from circuits.training.defaults import cached_default_transcoder_dir

        transcoders = cached_default_transcoder_dir(model)
        if transcoders is None:
            raise CircuitsError(f"no trained default transcoder for {model} in the cache: train it with "
                                f"`circuits transcoders train --model {model}` (it goes to the cache), or pass "
                                "--transcoders DIR")
    return ReplacementModel.load(model, transcoders, pick_device(device), progress=progress)


@app.command("capitals")
@with_config_options(TraceConfig, **STUDY_TRACE_OPTIONS)
def capitals_cmd(
    k: int = number_option(10, "--k", min=1, max=10_000, help="Features per inhibition and per swap side."),
    inject_scale: float = number_option(2.0, "--inject-scale", kind=float, min=-1e6, max=1e6, help="Scale of the injected activations."),
    model: str = REAL_MODEL_OPTION, transcoders: Optional[Path] = REAL_TRANSCODERS_OPTION, json_out: bool = JSON,
    device: str = DEVICE_OPTION, **options,
) -> None:
    """One-hop facts: which capitals the model knows, the graph of "The capital of France is" and the path
    from " France" to " Paris", inhibitions and a swap to Germany, each with a verdict."""
    from circuits.studies.demos.capitals import format_capitals, run_capitals_demo

    config = config_from(TraceConfig, options)
    rm = load_demo_setup(model, transcoders, device, progress=not json_out)
    report = run_capitals_demo(rm, k=k, inject_scale=inject_scale, config=config)
    print_json(report.to_json()) if json_out else _print(format_capitals(report))


@app.command("capitals-two-hop")
@with_config_options(TraceConfig, **STUDY_TRACE_OPTIONS)
def capitals_two_hop_cmd(
    k: int = number_option(10, "--k", min=1, max=10_000, help="Intermediate features per subject."),
    model: str = REAL_MODEL_OPTION, transcoders: Optional[Path] = REAL_TRANSCODERS_OPTION, json_out: bool = JSON,
    device: str = DEVICE_OPTION, **options,
) -> None:
    """Two-hop facts ("The capital of the country where sushi comes from is" -> Japan -> Tokyo): does an
    intermediate feature lie on a kept path to the answer? Inhibits it, with a verdict."""
    from circuits.studies.demos.capitals_two_hop import format_capitals_two_hop, run_capitals_two_hop

    config = config_from(TraceConfig, options)
    rm = load_demo_setup(model, transcoders, device, progress=not json_out)
    report = run_capitals_two_hop(rm, k=k, config=config)
    print_json(report.to_json()) if json_out else _print(format_capitals_two_hop(report))


@app.command("attention-induction")
def attention_induction_cmd(
    n: int = number_option(12, "--n", min=2, max=200, help="Random tokens in one copy of the sequence."),
    seed: int = number_option(0, "--seed", min=0, max=2**31 - 1, help="Seed of the random sequence."),
    multiplier: float = number_option(-1.0, "--multiplier", kind=float, min=-1e6, max=1e6,
                                      help="Inhibition: scale the top query-side feature's writes by this."),
    qk_heads: int = number_option(8, "--qk-heads", min=1, max=10_000, help="Heads explained in the traced graph."),
    model: str = REAL_MODEL_OPTION, transcoders: Optional[Path] = REAL_TRANSCODERS_OPTION, json_out: bool = JSON,
    device: str = DEVICE_OPTION,
) -> None:
    """Induction: a random token sequence written twice; the heads carrying its copy edges, whether their
    top QK pairs say "the key's previous token is the query's current token", and what inhibiting the
    top query-side feature does to the head's attention to the copy position."""
    from circuits.studies.demos.attention_induction import format_attention_induction, run_attention_induction

    rm = load_demo_setup(model, transcoders, device, progress=not json_out)
    report = run_attention_induction(rm, n=n, seed=seed, qk_heads=qk_heads, multiplier=multiplier)
    print_json(report.to_json()) if json_out else _print(format_attention_induction(report))


@app.command("attention-capitals")
def attention_capitals_cmd(
    prompt: str = typer.Option("The capital of France is", "--prompt", help="The prompt."),
    subject: str = typer.Option(" France", "--subject", help="The subject token (its last occurrence)."),
    qk_heads: int = number_option(8, "--qk-heads", min=1, max=10_000, help="Heads explained in the traced graph."),
    model: str = REAL_MODEL_OPTION, transcoders: Optional[Path] = REAL_TRANSCODERS_OPTION, json_out: bool = JSON,
    device: str = DEVICE_OPTION,
) -> None:
    """A capitals prompt: which heads move the country from its position to the last one, what on the
    query side makes them look there, and what removing that query-side feature does to the head."""
    from circuits.studies.demos.attention_two_hop import format_attention_two_hop, run_attention_two_hop

    rm = load_demo_setup(model, transcoders, device, progress=not json_out)
    report = run_attention_two_hop(rm, prompt, subject, qk_heads=qk_heads, word="country")
    print_json(report.to_json()) if json_out else _print(format_attention_two_hop(report))


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="demo")
    from circuits.cli import validate as validate_cli

    validate_cli.register(root)  # `circuits validate` (idempotent: main may register it too)
