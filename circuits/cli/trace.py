"""`circuits trace PROMPT`: attribution graph of a prompt, pruned, scored, summarised, exported."""

from __future__ import annotations

from pathlib import Path

import typer
from rich import markup

from circuits.cli.common import DEVICE_OPTION, DTYPE_OPTION, check_outputs, console, pick_device, print_json
from circuits.cli.options import build_config, given, with_config_options
from circuits.attribution.config import TraceConfig


def write_outputs(result, out_json: Path | None, full: Path | None, graphml: Path | None) -> None:
    from graphs import save_graph, write_viewer_json

    if full is not None:
        save_graph(result.graph, full)
    if out_json is not None:
        write_viewer_json(result.graph, result.pruned, out_json)
    if graphml is not None:
        from graphs import write_graphml  # networkx: about a second of imports, only for --graphml

        write_graphml(result.graph, result.pruned, graphml)


def print_summary(summary: dict) -> None:
    c, s = summary["counts"], summary["scores"]
    console.print(f"[bold]prompt[/bold] {summary['prompt']!r}  ({len(summary['tokens'])} tokens)")
    console.print("[bold]top logits[/bold]")
    for lg in summary["logits"]:
        console.print(f"  {lg['label']!r:>24}  p={lg['probability']:.3f}")
    console.print(f"[bold]graph[/bold] nodes {c['nodes_before']} -> {c['nodes_after']}, "
                  f"edges {c['edges_before']} -> {c['edges_after']}, "
                  f"features {c['features_before']} -> {c['features_after']}")
    for warning in summary.get("warnings", []):
        console.print(f"[bold red]warning[/bold red] {warning}")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    console.print(f"[bold]scores[/bold] replacement {fmt(s['replacement'])} (pruned {fmt(s['replacement_pruned'])}), "
                  f"completeness {fmt(s['completeness'])} (pruned {fmt(s['completeness_pruned'])})")
    console.print("[bold]most influential features per position[/bold] (L:POS:F, layer, influence, label)")
    for entry in summary["positions"]:
        if not entry["features"]:
            continue
        console.print(f"  {entry['position']:>3} {entry['token']!r}")
        for feat in sorted(entry["features"], key=lambda f: f["layer"]):
            fid = f"{feat['layer']}:{entry['position']}:{feat['feature']}"
            console.print(f"        {fid:<12} L{feat['layer']:<3} {feat['influence']:.3f}  {markup.escape(feat['label'])}", soft_wrap=True)
    if summary.get("features"):
        console.print("[bold]top features over all positions[/bold] (L:F, layer, positions, summed influence)")
        for feat in summary["features"]:
            where = ",".join(str(p) for p in feat["positions"])
            console.print(f"        {feat['layer']}:{feat['feature']:<8} L{feat['layer']:<3} pos {where:<10} "
                          f"{feat['influence']:.3f}  {markup.escape(feat['label'])}", soft_wrap=True)
    if summary.get("path"):
        console.print(f"[bold]strongest path to {summary['path']['target']!r}[/bold] "
                      f"(kept edges, through features; weight {summary['path']['weight']:.2e})")
        for n in summary["path"]["nodes"]:
            if n["kind"] == "embedding":
                console.print(f"        token {n['token']!r} (pos {n['position']})")
            elif n["kind"] == "logit":
                console.print(f"        -> logit {n['label']!r}")
            else:
                fid = f"{n['layer']}:{n['position']}:{n['feature']}"
                console.print(f"        -> {fid:<12} L{n['layer']:<3} {n['influence']:.3f}  {markup.escape(n['label'])}", soft_wrap=True)
    t = summary.get("timing_seconds", {})
    if t:
        console.print("[dim]timing " + ", ".join(f"{k} {v:.2f}s" for k, v in t.items()) + "[/dim]")


@with_config_options(TraceConfig)
def trace_cmd(
    prompt: str = typer.Argument(..., help="Prompt to trace."),
    model: str = typer.Option("world", "--model", "-m", help="Built-in name, local checkpoint dir or hub id."),
    transcoders: Path = typer.Option(None, "--transcoders", "-t", help="Transcoder directory (default: the built-in model's default CLT, trained on first use)."),
    out: Path = typer.Option(None, "-o", "--out", help="Write the pruned graph as viewer JSON here."),
    full: Path = typer.Option(None, "--full", help="Save the full unpruned graph (.npz) here, to re-prune later."),
    graphml: Path = typer.Option(None, "--graphml", help="Also write the pruned graph as GraphML."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    **settings,
) -> None:
    """Trace PROMPT: compute its attribution graph, prune and score it, print a summary, export it."""
    from circuits.replacement.model import ReplacementModel
    from circuits.trace import trace_prompt

    check_outputs(out, full, graphml)
    config = build_config(TraceConfig, given(TraceConfig, settings))
    rm = ReplacementModel.load(model, transcoders, pick_device(device), progress=True, dtype=dtype)
    result = trace_prompt(rm, prompt, config, progress=not json_out)
    write_outputs(result, out, full, graphml)
    if json_out:
        print_json(result.summary)
    else:
        print_summary(result.summary)
        for label, p in (("viewer JSON", out), ("full graph", full), ("GraphML", graphml)):
            if p is not None:
                console.print(f"wrote {label}: {p}")


def register(app: typer.Typer) -> None:
    app.command("trace")(trace_cmd)
