"""`circuits view GRAPH...` and `circuits serve`: the offline graph explorer (docs/viewer.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from circuits.cli.common import DEVICE_OPTION, DTYPE_OPTION, MODEL_OPTION, console, err_console, pick_device
from circuits.cli.options import number_option

HOST_OPTION = typer.Option("127.0.0.1", "--host", help="Address to listen on (anything but loopback "
                           "exposes the viewer, and with serve the model, to the network).")
PORT_OPTION = number_option(8000, "--port", min=0, max=65_535, help="Port to listen on (0: any free port).")
OPEN_OPTION = typer.Option(False, "--open", help="Open the page in the default browser.")


def _start(state, host: str, port: int, open_browser: bool) -> None:
    from circuits.viewer.app import create_app
    from circuits.viewer.server import bind, is_loopback, run, url_of

    if not is_loopback(host):
        err_console.print(f"warning: listening on {host}: anyone who can reach this address can use the "
                          "viewer (no authentication)", markup=False, highlight=False)
    sock = bind(host, port)
    run(create_app(state), sock, url_of(sock, host), open_browser,
        echo=lambda text: console.print(text, markup=False, highlight=False))


def _feature_source(transcoders: Optional[Path], graphs: list):
    """Feature data from --transcoders, else from the transcoder folder the graphs name (if present)."""
    from circuits.errors import CircuitsError
    from circuits.features.store import load_feature_index
    from circuits.viewer.feature_pages import FeatureSource

    folder = transcoders
    if folder is None:
        named = [Path(g.transcoders["path"]) for g in graphs if g.transcoders.get("path")]
        folder = next((p for p in named if p.is_dir()), None)
    if folder is None:
        return FeatureSource()
    if not Path(folder).is_dir():
        raise CircuitsError(f"transcoder directory {folder} does not exist")
    from transcoders.loading import load_transcoder

    transcoder = load_transcoder(folder, lazy=True)  # memory-mapped: only the rows a page reads
    return FeatureSource(index=load_feature_index(folder), transcoder=transcoder, transcoder_id=str(folder))


def _graph_features(graph) -> list[tuple[int, int]]:
    from graphs import NodeKind

    sl = graph.kind == NodeKind.FEATURE
    return sorted({(int(l), int(f)) for l, f in zip(graph.layer[sl], graph.feature[sl])})


def view_cmd(
    graph_files: list[Path] = typer.Argument(..., help="Graph files: viewer JSON (ours, circuit-tracer's, "
                                             "Neuronpedia's) or a full graph .npz."),
    transcoders: Optional[Path] = typer.Option(None, "--transcoders", help="Transcoder directory for feature "
                                               "pages (default: the one the graph names, if it exists here)."),
    export_features: Optional[Path] = typer.Option(None, "--export-features", help="Write the feature pages of "
                                                   "every feature in the graphs as {index}.json here, then exit."),
    host: str = HOST_OPTION, port: int = PORT_OPTION, open_browser: bool = OPEN_OPTION,
) -> None:
    """Explore attribution graphs in the browser, offline (no model needed)."""
    from circuits.viewer.app import ViewerState
    from circuits.viewer.graphs_held import open_graph_file

    state = ViewerState()
    opened = []
    for path in graph_files:
        graph, qparams, source = open_graph_file(path)
        state.shelf.add(path.name, graph, qparams, source)
        opened.append(graph)
    state.features = _feature_source(transcoders, opened)
    if export_features is not None:
        _export(state.features, opened, export_features)
        return
    _start(state, host, port, open_browser)


def _export(features, graphs: list, out_dir: Path) -> None:
    from circuits.errors import CircuitsError
    from circuits.viewer.feature_pages import export_feature_pages

    if not features.available:
        raise CircuitsError("no feature data to export: pass --transcoders DIR (with a feature index)")
    pairs = sorted({p for g in graphs for p in _graph_features(g)})
    paths = export_feature_pages(features, pairs, out_dir)
    console.print(f"wrote {len(paths)} feature pages to {out_dir}", markup=False, highlight=False)


def serve_cmd(
    graph_files: list[Path] = typer.Argument(None, help="Graph files to open besides the traces made here."),
    model: str = MODEL_OPTION,
    transcoders: Optional[str] = typer.Option(None, "--transcoders", help="Transcoder directory or hub repo id "
                                              "(default: the model's default CLT)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Trace this prompt before serving."),
    export_features: Optional[Path] = typer.Option(None, "--export-features", help="Write the feature pages "
                                                   "(with output views) of the graphs' features here, then exit."),
    host: str = HOST_OPTION, port: int = PORT_OPTION, open_browser: bool = OPEN_OPTION,
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
) -> None:
    """Explore graphs with the model loaded: trace new prompts, intervene on features, steer generation."""
    from circuits.replacement.model import ReplacementModel
    from circuits.viewer.app import ViewerState
    from circuits.viewer.feature_pages import FeatureSource
    from circuits.viewer.graphs_held import open_graph_file
    from circuits.viewer.live import LiveModel

    state = ViewerState()
    opened = []
    for path in graph_files or []:
        graph, qparams, source = open_graph_file(path)
        state.shelf.add(path.name, graph, qparams, source)
        opened.append(graph)
    if not export_features:  # bind before the (slow) model load: a busy port fails at once
        from circuits.viewer.server import bind

        bind(host, port).close()
    rm = ReplacementModel.load(model, transcoders, pick_device(device), progress=True, dtype=dtype)
    state.live = LiveModel(rm)
    state.features = FeatureSource(index=rm.index, transcoder=rm.transcoder, loaded=rm.loaded,
                                   transcoder_id=str(rm.transcoder_dir or ""), model_lock=state.live.lock)
    if prompt:
        result = state.live.trace(prompt, {})
        state.shelf.add(prompt, result.graph, {}, "traced")
        opened.append(result.graph)
    if export_features is not None:
        _export(state.features, opened, export_features)
        return
    _start(state, host, port, open_browser)


def register(app: typer.Typer) -> None:
    app.command("view")(view_cmd)
    app.command("serve")(serve_cmd)
