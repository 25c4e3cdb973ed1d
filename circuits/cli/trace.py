"""`circuits trace PROMPT`: attribution graph of a prompt, pruned, scored, summarised, exported."""

from __future__ import annotations

from pathlib import Path

import typer

from circuits.cli.common import console, pick_device, print_json


def check_writable(path: Path | None) -> None:
    """Refuse an output path whose folder is missing or not writable, before any work is done."""
    import os

    from circuits.errors import CircuitsError

    if path is None:
        return
    folder = path.expanduser().resolve().parent
    if not folder.is_dir():
        raise CircuitsError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise CircuitsError(f"cannot write {path}: folder {folder} is not writable")
    if path.is_dir():
        raise CircuitsError(f"cannot write {path}: it is a directory")


def write_outputs(result, out_json: Path | None, full: Path | None, graphml: Path | None) -> None:
    from graphs import save_graph, write_graphml, write_viewer_json

    if full is not None:
        save_graph(result.graph, full)
    if out_json is not None:
        write_viewer_json(result.graph, result.pruned, out_json)
    if graphml is not None:
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
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    console.print(f"[bold]scores[/bold] replacement {fmt(s['replacement'])} (pruned {fmt(s['replacement_pruned'])}), "
                  f"completeness {fmt(s['completeness'])} (pruned {fmt(s['completeness_pruned'])})")
    console.print("[bold]most influential features per position[/bold] (id L:POS:F, influence, description)")
    for entry in summary["positions"]:
        if not entry["features"]:
            continue
        console.print(f"  {entry['position']:>3} {entry['token']!r}")
        for feat in entry["features"]:
            fid = f"{feat['layer']}:{entry['position']}:{feat['feature']}"
            console.print(f"        {fid:<12} {feat['influence']:.3f}  {feat['label']}")
    t = summary.get("timing_seconds", {})
    if t:
        console.print("[dim]timing " + ", ".join(f"{k} {v:.2f}s" for k, v in t.items()) + "[/dim]")


def register(app: typer.Typer) -> None:
    @app.command("trace")
    def trace_cmd(
        prompt: str = typer.Argument(..., help="Prompt to trace."),
        model: str = typer.Option("world", "--model", "-m", help="Built-in name, local checkpoint dir or hub id."),
        transcoders: Path = typer.Option(None, "--transcoders", "-t", help="Transcoder directory (default: the built-in model's default CLT, trained on first use)."),
        out: Path = typer.Option(None, "-o", "--out", help="Write the pruned graph as viewer JSON here."),
        full: Path = typer.Option(None, "--full", help="Save the full unpruned graph (.npz) here, to re-prune later."),
        graphml: Path = typer.Option(None, "--graphml", help="Also write the pruned graph as GraphML."),
        node_threshold: float = typer.Option(0.8, help="Share of influence the kept nodes hold."),
        edge_threshold: float = typer.Option(0.98, help="Share of edge score the kept edges hold."),
        max_feature_nodes: int = typer.Option(None, help="Attribute at most this many features (chosen by influence)."),
        max_n_logits: int = typer.Option(10, help="At most this many logit targets."),
        target: list[str] = typer.Option([], "--target", help="Extra target token (repeatable)."),
        contrast: str = typer.Option(None, "--contrast", help="With one --target: trace logit(target) - logit(contrast)."),
        batch_size: int = typer.Option(64, help="Target rows per backward sweep."),
        json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
        device: str = typer.Option("auto", help="cpu, cuda or auto."),
    ) -> None:
        """Trace PROMPT: compute its attribution graph, prune and score it, print a summary, export it."""
        from circuits.replacement_model import ReplacementModel
        from circuits.trace import TraceConfig, trace_prompt

        for path in (out, full, graphml):
            check_writable(path)
        config = TraceConfig(node_threshold=node_threshold, edge_threshold=edge_threshold,
                             max_feature_nodes=max_feature_nodes, max_n_logits=max_n_logits,
                             targets=list(target), contrast=contrast, batch_size=batch_size)
        rm = ReplacementModel.load(model, transcoders, pick_device(device), progress=True)
        result = trace_prompt(rm, prompt, config, progress=not json_out)
        write_outputs(result, out, full, graphml)
        if json_out:
            print_json(result.summary)
        else:
            print_summary(result.summary)
            for label, p in (("viewer JSON", out), ("full graph", full), ("GraphML", graphml)):
                if p is not None:
                    console.print(f"wrote {label}: {p}")
