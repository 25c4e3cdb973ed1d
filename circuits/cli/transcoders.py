"""`circuits transcoders train|info`: train a transcoder for a model; show a trained one.

Every field of transcoders.train_config.TrainConfig, and of the architecture it nests
(TrainConfig.transcoder), is an option of `train` (its description is the help text); unset options take the model's default configuration (built-in models) or
TrainConfig's defaults. With --resume, unset options come from the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from circuits.cli.common import DEVICE_OPTION, HELP, console, output_file_option, pick_device, print_json
from circuits.cli.options import build_config, flag, given, number_option, with_config_options
from transcoders.train_config import TrainConfig

app = typer.Typer(**HELP, help="Train and inspect transcoders (CLT / PLT).", no_args_is_help=True)

def resolve_config(model: str, out: Path, resume: bool, overrides: dict, recipe: str | None = None) -> TrainConfig:
    """TrainConfig from the model's defaults or its named --recipe (fresh), or the checkpoint (resume),
    plus explicit options. Resuming with a recipe: the checkpoint's run must have been that recipe."""
    from circuits.models.registry import BUILTIN_MODELS, default_transcoder_fields, recipe_config
    from transcoders.checkpoint import CHECKPOINT_FILE, load_checkpoint
    from pydantic import ValidationError

    from circuits.cli.options import describe_validation_error
    from transcoders.errors import TranscoderError

    options = given(TrainConfig, overrides)
    if recipe is not None:
        named = recipe_config(model, recipe)
        if not resume:
            return build_config(TrainConfig, {**named.flat(), **options})
        options = {**{k: v for k, v in named.flat().items() if k not in TrainConfig.RUNTIME_FIELDS}, **options}
    if not resume:
        base = default_transcoder_fields(model, options.get("kind"))
        if base is None and model in BUILTIN_MODELS:  # e.g. world --kind plt: its default, another kind
            base = BUILTIN_MODELS[model].transcoder_config
        return build_config(TrainConfig, {**(base or TrainConfig()).flat(), **options})
    ckpt = out / CHECKPOINT_FILE
    if not ckpt.exists():
        return build_config(TrainConfig, options)  # prepare_outputs reports the missing checkpoint
    try:
        saved = TrainConfig.from_flat(load_checkpoint(ckpt)[1]["train_config"])  # flat before the nesting
    except ValidationError as exc:  # e.g. --topk with JumpReLU, accepted before it was refused
        raise TranscoderError(f"{ckpt}: the run's settings are refused now "
                              f"({describe_validation_error(TrainConfig, exc)}): start again with --overwrite") from None
    wanted = build_config(TrainConfig, {**saved.flat(), **options})
    before, after = saved.flat(), wanted.flat()
    diff = [k for k in options if after[k] != before[k] and k not in TrainConfig.RUNTIME_FIELDS]
    if diff:
        shown = ", ".join(f"{flag(TrainConfig, k)} {after[k]} (checkpoint: {before[k]})" for k in diff)
        raise TranscoderError(f"--resume continues the run as it was started; these differ: {shown}")
    return wanted


def default_out(model: str, overrides: dict, resume: bool, overwrite: bool,
                recipe: str | None = None) -> tuple[Path, bool]:
    """No --out: the built-in model's default transcoder folder in the cache (where `trace` looks),
    and whether to resume (an unfinished run there continues unless --overwrite)."""
    from circuits.errors import CircuitsError
    from circuits.models.registry import default_transcoder_fields, recipe_config
    from circuits.training.defaults import default_transcoder_dir
    from transcoders.checkpoint import CHECKPOINT_FILE

    kind = given(TrainConfig, overrides).get("kind")
    if recipe is not None and kind is None:
        kind = recipe_config(model, recipe).transcoder.kind
    fields = default_transcoder_fields(model, kind)
    if fields is None:
        raise CircuitsError(f"--out is needed: '{model}' has no default transcoder" + (f" of kind {kind}" if kind else ""))
    out = default_transcoder_dir(model, fields.transcoder.kind)
    return out, resume or (not overwrite and (out / CHECKPOINT_FILE).exists())


def run_training(model: str, out: Path | None, *, resume: bool, overwrite: bool, corpus: str | None,
                 log: Path | None, device: str, progress: bool, overrides: dict, recipe: str | None = None):
    """What `transcoders train` does, in checking order: settings, output folder, model, corpus,
    then training. Every user mistake stops with one line before anything is written."""
    from circuits.models import load_model
    from circuits.training.defaults import make_default_transcoder
    from circuits.training.train import train_for_model
    from transcoders.threads import check_threads
    from transcoders.trainer import output_lock, prepare_outputs

    default = out is None
    if default:
        out, resume = default_out(model, overrides, resume, overwrite, recipe)
        if progress:
            console.print(f"{'resuming' if resume else 'training'} the default transcoder in {out}", markup=False)
    cfg = resolve_config(model, out, resume, overrides, recipe)
    check_threads(cfg.threads)
    with output_lock(out):  # a second run into the same folder fails here, at once (held until saved)
        prepare_outputs(out, cfg, resume=resume, overwrite=overwrite, log_path=log)
        loaded = load_model(model, device=device, progress=progress)
        if default:  # the one way to make a default transcoder (also first use's): trains, then indexes
            return make_default_transcoder(loaded, cfg, out, resume=resume, overwrite=overwrite, progress=progress,
                                           device=device, corpus=corpus, log_path=log)
        return train_for_model(loaded, cfg, out, corpus, resume=resume, overwrite=overwrite, progress=progress,
                               log_path=log, device=device)


@with_config_options(TrainConfig)
def train_cmd(
    model: str = typer.Option(..., "--model", help="Model: built-in name, checkpoint dir or hub id."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (circuit-tracer format); default for "
                                       "built-in models: their default transcoder's folder in the cache, where "
                                       "`trace` finds it (an unfinished run there resumes)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out directory."),
    corpus: Optional[str] = typer.Option(None, "--corpus", help="Text file (one document per line) or dataset "
                                         "name; default: the built-in model's own corpus."),
    log: Optional[Path] = output_file_option("--log", help="Append one JSON line of metrics per log step here."),
    device: str = DEVICE_OPTION,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
    json_out: bool = typer.Option(False, "--json", help="Print the final metrics as JSON."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="A built-in model's named training config "
                                         "instead of its first-use one (smollm2-135m, gemma3-270m: long, "
                                         "under 30 CPU-minutes on 2 cores; docs/transcoders.md); options still override it."),
    **options,
) -> None:
    """Train a cross-layer (clt) or per-layer (plt) transcoder for --model; progress shows
    tokens/s, loss, FVU and L0. Runs under torchrun for several GPUs (docs/transcoders.md).
    For built-in models unset options take the model's default configuration of that --kind (its
    registry entry, circuits/models/registry.py), not the defaults listed below."""
    result = run_training(model, out, resume=resume, overwrite=overwrite, corpus=corpus, log=log,
                          device=pick_device(device), progress=progress, overrides=options, recipe=recipe)
    if json_out:
        print_json({"out": str(result.out_dir), **result.metrics})
        return
    fid = result.metrics.get("fidelity", {})
    tr = result.metrics.get("training", {})
    console.print(f"saved [bold]{result.out_dir}[/bold] ({tr.get('steps')} steps, {tr.get('tokens')} tokens, "
                  f"{tr.get('seconds')} s)")
    for key in ("fvu_mean", "l0_total", "dead_fraction", "top1_agreement", "kl_mean", "ce_original", "ce_replacement"):
        if key in fid:
            console.print(f"  {key}: {fid[key]}")


app.command("train")(train_cmd)


@app.command("cache-activations")
def cache_activations_cmd(
    model: str = typer.Option(..., "--model", help="Model: built-in name, checkpoint dir or hub id."),
    tokens: Optional[int] = number_option(None, "--tokens", min=1, max=10**12, help="Training positions to store "
                                          "(default: the model's default training config's)."),
    corpus: Optional[str] = typer.Option(None, "--corpus", help="Text file or dataset name; default: the "
                                         "built-in model's own corpus."),
    out: Optional[Path] = typer.Option(None, "--out", help="Cache folder; default "
                                       "$CIRCUITS_HOME/activations/<model>/<key>."),
    seq_len: Optional[int] = number_option(None, "--seq-len", min=2, max=1 << 20, help="Window length "
                                           "(default: the model's default training config)."),
    cache_dtype: Optional[str] = typer.Option(None, "--cache-dtype", help="bfloat16 (default) or float32."),
    device: str = DEVICE_OPTION,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
) -> None:
    """Run the model over the corpus once and store every layer's (input, MLP output) activations,
    memory-mapped; `train --cache-dir DIR` then trains from them without the model forward."""
    from circuits.models import load_model
    from circuits.training.activations import cache_activations

    overrides = {k: v for k, v in {"seq_len": seq_len, "cache_dtype": cache_dtype}.items() if v is not None}
    cfg = resolve_config(model, Path("."), False, overrides)
    if out is not None:
        from transcoders.activation_cache import check_cache_dir

        check_cache_dir(out)
    loaded = load_model(model, device=pick_device(device), progress=progress)
    path = cache_activations(loaded, cfg, tokens or cfg.tokens, corpus, out, progress=progress)
    print(path)


@app.command("info")
def info_cmd(path: Path = typer.Argument(..., help="Transcoder directory."),
             json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show a transcoder directory's architecture, training config and metrics."""
    from circuits.paths import checked_weights_dir
    from transcoders.formats import read_training_files
    from transcoders.loading import load_transcoder

    tc = load_transcoder(path, lazy=True, stamp_dir=checked_weights_dir())  # the loader's checks, NaN included
    out = {"path": str(path), "transcoder": tc.cfg.model_dump(), **read_training_files(path)}
    if json_out:
        print_json(out)
        return
    c = tc.cfg
    console.print(f"[bold]{path}[/bold]: {c.kind}, {c.n_layers} layers x {c.n_features} features, d_model {c.d_model}, "
                  f"{c.activation}{' + skip' if c.skip else ''}; reads {c.input_hook}, writes {c.output_hook}")
    for key, value in (out.get("metrics", {}).get("fidelity") or {}).items():
        if not isinstance(value, list):
            console.print(f"  {key}: {value}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="transcoders")
