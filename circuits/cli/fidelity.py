"""`circuits fidelity --model M --transcoders DIR [--json] [--plot out.png]`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from circuits.cli.common import (DEVICE_OPTION, DTYPE_OPTION, check_outputs, console, output_file_option, pick_device,
                                 print_json)
from circuits.cli.options import number_option


def fidelity_cmd(
    model: str = typer.Option(..., "--model", help="Model: built-in name, checkpoint dir or hub id."),
    transcoders: str = typer.Option(..., "--transcoders", help="Transcoder directory (circuit-tracer format), "
                                    "its config.yaml, or a hub repo id (owner/repo[/sub][@rev]), as `trace` takes."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    plot: Optional[Path] = output_file_option("--plot", help="Write a PNG of FVU and L0 by layer."),
    corpus: Optional[str] = typer.Option(None, "--corpus", help="Held-out text: file or dataset name "
                                         "(default: the built-in model's own corpus)."),
    tokens: Optional[int] = number_option(None, "--tokens", min=64, max=10**10, help="Evaluation tokens "
                                          "(default: 32768, or what the held-out text has if less)."),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar (stderr)."),
) -> None:
    """Compare the replacement model (every MLP replaced by the transcoder) with the original on
    held-out text: FVU and L0 per layer, dead features, top-1 agreement, KL and cross-entropy."""
    from circuits.training.fidelity import fidelity_report, plot_fidelity
    from circuits.models import load_model

    check_outputs(plot)
    loaded = load_model(model, device=pick_device(device), dtype=dtype)
    report = fidelity_report(loaded, transcoders, corpus=corpus, max_tokens=tokens or 32768, progress=progress,
                             strict_tokens=tokens is not None)
    if plot is not None:
        report["plot"] = str(plot_fidelity(report, plot))
    if json_out:
        print_json(report)
        return
    console.print(f"[bold]{report['model']}[/bold] + {report['kind']} ({report['n_features']} features/layer), "
                  f"{report['n_tokens']} tokens of {report['corpus']}")
    for key in ("fvu_mean", "l0_total", "dead_fraction", "top1_agreement", "kl_mean", "ce_original", "ce_replacement"):
        console.print(f"  {key:<15} {report[key]}")
    console.print("  fvu by layer    " + " ".join(f"{v:.3f}" for v in report["fvu_per_layer"]))
    console.print("  l0 by layer     " + " ".join(f"{v:.1f}" for v in report["l0_per_layer"]))
    if plot is not None:
        console.print(f"  plot            {plot}")


def register(app: typer.Typer) -> None:
    app.command("fidelity")(fidelity_cmd)
