"""`circuits prune graph.npz -o pruned.json`: re-prune a saved full graph without recomputing it."""

from __future__ import annotations

from pathlib import Path

import typer

from circuits.cli.common import check_outputs, output_file_option, print_json
from circuits.cli.options import number_option


def register(app: typer.Typer) -> None:
    @app.command("prune")
    def prune_cmd(
        graph_file: Path = typer.Argument(..., help="Full graph saved by `circuits trace --full`."),
        out: Path = output_file_option("-o", "--out", help="Write the pruned graph as viewer JSON here."),
        graphml: Path = output_file_option("--graphml", help="Also write GraphML."),
        node_threshold: float = number_option(0.8, "--node-threshold", kind=float, min=0, max=1, min_open=True, help="Share of influence the kept nodes hold."),
        edge_threshold: float = number_option(0.98, "--edge-threshold", kind=float, min=0, max=1, min_open=True, help="Share of edge score the kept edges hold."),
        json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    ) -> None:
        """Prune a saved full graph with new thresholds; print its summary and export it."""
        from circuits.cli.trace import print_summary, write_outputs
        from circuits.errors import CircuitsError
        from circuits.trace import TraceResult
        from graphs import load_graph, prune_graph, summarize

        if not (0 < node_threshold <= 1 and 0 < edge_threshold <= 1):
            raise CircuitsError("thresholds must be in (0, 1]")
        check_outputs(out, graphml, inputs=(graph_file,))
        graph = load_graph(graph_file)
        pruned = prune_graph(graph, node_threshold, edge_threshold)
        result = TraceResult(graph, pruned, summarize(graph, pruned))
        write_outputs(result, out, None, graphml)
        if json_out:
            print_json(result.summary)
        else:
            print_summary(result.summary)
