"""`circuits intervene PROMPT --set L:POS:F=VALUE|xMULT ...`: constrained patching in the real model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from circuits.cli.common import DEVICE_OPTION, DTYPE_OPTION, MODEL_OPTION, TRANSCODERS_OPTION, console, pick_device, print_json
from circuits.cli.options import number_option


def _print_result(result, tokenizer, freeze: bool, clamp: bool) -> None:
    a, b = result.layers
    mode = "MLP outputs clamped" if clamp else "MLPs keep running"
    console.print(f"patched layers {a}:{b}, attention {'frozen' if freeze else 'recomputed'}, {mode}")
    for c in result.changes:
        console.print(f"  {c.feature_id:<14} {c.before:9.4f} -> {c.after:9.4f}")
    console.print(f"{'':>3}  {'before':<28} {'after':<28}")
    for i, (p, q) in enumerate(zip(result.top_before, result.top_after)):
        console.print(f"{i + 1:>3}  {p['prob']:7.4f} {p['token']!r:<20} {q['prob']:7.4f} {q['token']!r:<20}",
                      markup=False, highlight=False)
    console.print(f"KL(before || after) = {result.kl:.4f} nats")
    if result.generated_before or result.generated_after:
        console.print(f"greedy before: {tokenizer.decode(result.generated_before)!r}", markup=False)
        console.print(f"greedy after:  {tokenizer.decode(result.generated_after)!r}", markup=False)


def intervene_cmd(
    prompt: str = typer.Argument(..., help="Prompt text."),
    sets: list[str] = typer.Option(
        ..., "--set", help="LAYER:POS:FEATURE=VALUE (set) or =xMULT (scale: x0 ablates, x-1 inverts, x2 doubles). "
        "POS: index, negative from the end, or an inclusive range a..b. Repeat for several features."),
    layers: Optional[str] = typer.Option(
        None, "--layers", help="Patched layer range A:B (inclusive), A, or A: (default: first intervened layer to last)."),
    freeze_attention: bool = typer.Option(True, "--freeze-attention/--no-freeze-attention",
                                          help="Hold attention patterns at their clean values."),
    clamp_mlps: bool = typer.Option(False, "--clamp-mlps/--no-clamp-mlps",
                                    help="Hold the patched layers' MLP outputs at clean + decoder change."),
    model: str = MODEL_OPTION,
    transcoders: Optional[Path] = TRANSCODERS_OPTION,
    generate: int = number_option(0, "--generate", min=0, max=4096, help="Greedy tokens to generate before and after."),
    top: int = number_option(10, "--top", min=1, max=10_000, help="Next tokens to list."),
    json_out: bool = typer.Option(False, "--json", help="Print top lists, KL and the changes as JSON."),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
) -> None:
    """Change features' activations, patch their decoder change into the MLP outputs, compare next tokens."""
    from circuits.interventions import parse_layer_range, parse_set
    from circuits.replacement.model import ReplacementModel

    interventions = [parse_set(s) for s in sets]
    span = parse_layer_range(layers) if layers is not None else None
    rm = ReplacementModel.load(model, transcoders, pick_device(device), dtype=dtype)
    result = rm.intervene(prompt, interventions, layers=span, freeze_attention=freeze_attention,
                          clamp_mlps=clamp_mlps, top=top, generate=generate)
    if json_out:
        print_json({"prompt": prompt, "freeze_attention": freeze_attention, "clamp_mlps": clamp_mlps,
                    **result.to_json(rm.tokenizer)})
    else:
        _print_result(result, rm.tokenizer, freeze_attention, clamp_mlps)


def register(app: typer.Typer) -> None:
    app.command("intervene")(intervene_cmd)
