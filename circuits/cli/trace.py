"""`circuits trace PROMPT`: attribution graph of a prompt, pruned, scored, summarised, exported."""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import typer
from rich import markup

from circuits.cli.common import (DEVICE_OPTION, DTYPE_OPTION, check_outputs, console, output_file_option, pick_device,
                                 print_json)
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
    prompt = summary["prompt"]
    shown = repr(prompt) if len(prompt) <= 240 else f"{prompt[:100]!r} ... {prompt[-100:]!r}"
    console.print(f"[bold]prompt[/bold] {markup.escape(shown)}  ({len(summary['tokens'])} tokens)")
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


def read_prompt(prompt: str | None, prompt_file: Path | None) -> str:
    """The prompt: the argument, or the text of --prompt-file (`-`: standard input), exactly one."""
    from circuits.errors import CircuitsError

    if (prompt is None) == (prompt_file is None):
        raise CircuitsError("give the prompt as an argument or with --prompt-file (one of them)")
    if prompt_file is None:
        return prompt
    try:
        raw = sys.stdin.buffer.read() if str(prompt_file) == "-" else Path(prompt_file).read_bytes()
    except OSError as exc:
        raise CircuitsError(f"cannot read --prompt-file {prompt_file}: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CircuitsError(f"--prompt-file {prompt_file} is not UTF-8 text (byte {exc.start})") from None


@contextmanager
def interrupts_deferred():
    """Hold Ctrl-C while the outputs are written, so they are all written or none is (each file is
    atomic already); an interrupt that came meanwhile is raised after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


@with_config_options(TraceConfig)
def trace_cmd(
    prompt: str = typer.Argument(None, help="Prompt to trace (or give --prompt-file)."),
    prompt_file: Path = typer.Option(None, "--prompt-file", help="Read the prompt from this UTF-8 file (`-`: "
                                     "standard input), for documents too long for an argument."),
    model: str = typer.Option("world", "--model", "-m", help="Built-in name, local checkpoint dir or hub id."),
    transcoders: Path = typer.Option(None, "--transcoders", "-t", help="Transcoder directory (default: the built-in model's default CLT, trained on first use)."),
    out: Path = output_file_option("-o", "--out", help="Write the pruned graph as viewer JSON here."),
    full: Path = output_file_option("--full", help="Save the full unpruned graph (.npz) here, to re-prune later."),
    graphml: Path = output_file_option("--graphml", help="Also write the pruned graph as GraphML."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    **settings,
) -> None:
    """Trace PROMPT: compute its attribution graph, prune and score it, print a summary, export it."""
    from circuits.attribution.row_split import RowSplit, split_rows
    from circuits.batch.sharding import join
    from circuits.cli.trace_batch import leave, load_on_ranks
    from circuits.replacement.prompts import check_text
    from circuits.trace import trace_prompt

    check_outputs(out, full, graphml, inputs=(prompt_file,))
    config = build_config(TraceConfig, given(TraceConfig, settings))
    prompt = read_prompt(prompt, prompt_file)
    check_text(prompt)  # before the model loads (a first use builds it for minutes)
    info, dev = join(pick_device(device))  # under torchrun the prompt's rows are split over the ranks
    rm = load_on_ranks(model, transcoders, dev, dtype, info)
    with split_rows(RowSplit(info.rank, info.world_size)):
        result = trace_prompt(rm, prompt, config, progress=not json_out and info.is_main)
    if not info.is_main:
        leave(info)
        return
    with interrupts_deferred():
        write_outputs(result, out, full, graphml)
    if json_out:
        print_json(result.summary)
    else:
        print_summary(result.summary)
        for label, p in (("viewer JSON", out), ("full graph", full), ("GraphML", graphml)):
            if p is not None:
                console.print(f"wrote {label}: {p}")
    leave(info)


def register(app: typer.Typer) -> None:
    app.command("trace")(trace_cmd)
