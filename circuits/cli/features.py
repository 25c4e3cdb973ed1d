"""`circuits features index|show`: what each transcoder feature fires on and what it writes."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from circuits.cli.common import (DEVICE_OPTION, DTYPE_OPTION, HELP, MODEL_OPTION, TRANSCODERS_OPTION, check_outputs, console,
                                 pick_device, print_json)
from circuits.cli.options import number_option

app = typer.Typer(**HELP, help="Index transcoder features over a corpus and show them.", no_args_is_help=True)


def _feature_arg(text: str) -> tuple[int, int]:
    """'L:F', or a trace id 'L:POS:F' (the position is ignored)."""
    from circuits.errors import CircuitsError

    parts = text.strip().split(":")
    if len(parts) not in (2, 3) or not all(p.strip().lstrip("-").isdigit() for p in parts):
        raise CircuitsError(f"malformed feature '{text}': expected LAYER:FEATURE (or LAYER:POS:FEATURE), e.g. 3:120")
    return int(parts[0]), int(parts[-1])


@app.command("index")
def index_cmd(
    model: str = MODEL_OPTION,
    transcoders: Optional[Path] = TRANSCODERS_OPTION,
    tokens: Optional[int] = number_option(None, "--tokens", min=1, max=10**10, help="Corpus tokens to read (BOS "
                                          "not counted; default: 30000, or what the corpus has if less); the "
                                          "time is about one model forward pass per token."),
    corpus: Optional[str] = typer.Option(None, "--corpus", help="Text file (one document per line) or dataset "
                                         "name (default: the built-in model's own corpus)."),
    top: int = number_option(10, "--top", min=1, max=1000, help="Contexts kept per feature."),
    before: int = number_option(8, "--before", min=0, max=1024, help="Context tokens before the activating token."),
    after: int = number_option(2, "--after", min=0, max=1024, help="Context tokens after it."),
    batch_size: int = number_option(16, "--batch-size", min=1, max=65_536, help="Windows (of at most 128 tokens) per forward pass."),
    json_out: bool = typer.Option(False, "--json", help="Print path and counts as JSON."),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
) -> None:
    """Run the corpus once; store each feature's top contexts and firing frequency beside the transcoders.
    Under torchrun (`torchrun --nproc-per-node N -m circuits features index ...`) the corpus's
    batches are sharded over the ranks and merged exactly (the same index as one process)."""
    from circuits.batch.sharding import join, on_rank0
    from circuits.cli.trace_batch import leave, load_on_ranks
    from circuits.features.index import index
    from circuits.features.store import INDEX_JSON, INDEX_NPZ

    info, dev = join(pick_device(device))
    rm = load_on_ranks(model, transcoders, dev, dtype, info)
    on_rank0(lambda: check_outputs(*(Path(rm.transcoder_dir) / name for name in (INDEX_NPZ, INDEX_JSON))),
             info)  # before the pass
    built = index(rm, corpus, max_tokens=tokens or 30_000, strict_tokens=tokens is not None, progress=not json_out,
                  k=top, before=before, after=after, batch_size=batch_size, info=info)
    if not info.is_main:
        leave(info)
        return
    path = Path(rm.transcoder_dir) / INDEX_NPZ
    freq = built.frequency_layer_feat
    summary = {"path": str(path), "n_tokens": built.meta["n_tokens"], "n_docs": built.meta["n_docs"],
               "dead_features": int((freq == 0).sum()), "n_features": int(freq.size),
               "mean_l0_per_layer": float(freq.sum(1).mean())}
    if json_out:
        print_json(summary)
    else:
        console.print(f"indexed {summary['n_tokens']} tokens ({summary['n_docs']} documents) -> {path}")
        console.print(f"dead features: {summary['dead_features']} of {summary['n_features']}; "
                      f"mean active features per token per layer: {summary['mean_l0_per_layer']:.1f}")
    leave(info)


@app.command("show")
def show_cmd(
    feature: str = typer.Argument(..., help="LAYER:FEATURE (a trace id LAYER:POS:FEATURE also works)."),
    model: str = MODEL_OPTION,
    transcoders: Optional[Path] = TRANSCODERS_OPTION,
    top: int = number_option(8, "--top", min=1, max=10_000, help="Output-view tokens to list each way."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
) -> None:
    """Print a feature's top contexts, firing frequency and output view (tokens its decoders promote)."""
    from circuits.errors import CircuitsError
    from circuits.features.output_view import output_view
    from circuits.replacement.model import ReplacementModel

    layer, feat = _feature_arg(feature)
    rm = ReplacementModel.load(model, transcoders, pick_device(device), dtype=dtype)
    index, folder = rm.index, rm.transcoder_dir
    if index is None:
        raise CircuitsError(f"no feature index in {folder}: run `circuits features index --model {model}"
                            f"{f' --transcoders {transcoders}' if transcoders else ''}` first")
    contexts = index.top_contexts(layer, feat)
    view = output_view(rm.model, rm.transcoder, layer, feat, k=top)
    if json_out:
        print_json({"layer": layer, "feature": feat, "frequency": index.frequency(layer, feat),
                    "mean_activation": index.mean_activation(layer, feat), "n_tokens": index.meta["n_tokens"],
                    "contexts": [vars(c) for c in contexts], **view})
        return
    console.print(f"feature {layer}:{feat}: fires on {100 * index.frequency(layer, feat):.3f}% of "
                  f"{index.meta['n_tokens']} tokens, mean activation when active "
                  f"{index.mean_activation(layer, feat):.3f}", markup=False)
    console.print("top contexts:" if contexts else "top contexts: none (never active on the corpus)")
    for c in contexts:
        console.print(f"  {c.activation:8.3f}  {c.text('[[{}]]')!r}", markup=False, highlight=False)
    console.print("output view (decoders -> final norm (approx.) -> unembedding):")
    for label, rows in (("promotes", view["promoted"]), ("suppresses", view["suppressed"])):
        console.print(f"  {label}: " + ", ".join(f"{t!r} ({v:+.2f})" for t, v in rows), markup=False,
                      highlight=False)


def register(main_app: typer.Typer) -> None:
    main_app.add_typer(app, name="features")
