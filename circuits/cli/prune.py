"""`circuits prune graph.npz -o pruned.json`: re-prune a saved full graph without recomputing it."""

from __future__ import annotations

from pathlib import Path

import typer

from circuits.attribution.config import TraceConfig
from circuits.cli.common import check_outputs, print_json
from circuits.cli.options import config_from, with_config_options


def register(app: typer.Typer) -> None:
    @app.command("prune")
    @with_config_options(TraceConfig, only=("node_threshold", "edge_threshold"))
    def prune_cmd(
        graph_file: Path = typer.Argument(..., help="Full graph saved by `circuits trace --full`."),
        out: Path = typer.Option(None, "-o", "--out", help="Write the pruned graph as viewer JSON here."),
        graphml: Path = typer.Option(None, "--graphml", help="Also write GraphML."),
        json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
        **options,
    ) -> None:
        """Prune a saved full graph with new thresholds; print its summary and export it."""
        from circuits.cli.trace import print_summary, write_outputs
        from circuits.trace import TraceResult
        from graphs import load_graph, prune_graph, summarize

        config = config_from(TraceConfig, options)
        check_outputs(out, graphml, inputs=(graph_file,))
        graph = load_graph(graph_file)
        pruned = prune_graph(graph, config.node_threshold, config.edge_threshold)
        result = TraceResult(graph, pruned, summarize(graph, pruned))
        write_outputs(result, out, None, graphml)
        if json_out:
            print_json(result.summary)
        else:
            print_summary(result.summary)
