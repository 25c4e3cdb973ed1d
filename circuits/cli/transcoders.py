"""`circuits transcoders train|info`: train a transcoder for a model; show a trained one.

Every field of transcoders.train_config.TrainConfig is an option of `train` (its description is
the help text); unset options take the model's default configuration (built-in models) or
TrainConfig's defaults. With --resume, unset options come from the checkpoint.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path

import typer

from circuits.cli.common import console, pick_device, print_json
from transcoders.train_config import TrainConfig

app = typer.Typer(help="Train and inspect transcoders (CLT / PLT).", no_args_is_help=True)

_FLAG_NAMES = {"n_features": "--features"}


def _flag(name: str) -> str:
    return _FLAG_NAMES.get(name, "--" + name.replace("_", "-"))


def _option_type(annotation) -> tuple[type, str]:
    """(click-friendly type, extra help) of a TrainConfig field annotation."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return str, " [" + "|".join(map(str, typing.get_args(annotation))) + "]"
    if args and typing.get_origin(annotation) is not typing.Literal:
        return _option_type(args[0])
    return annotation, ""


def _config_parameters() -> list[inspect.Parameter]:
    params = []
    for name, field in TrainConfig.model_fields.items():
        typ, extra = _option_type(field.annotation)
        default = field.default
        help_text = f"{field.description}{extra} (default: {default})"
        decls = [f"{_flag(name)}/--no-{name.replace('_', '-')}"] if typ is bool else [_flag(name)]
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                                        default=typer.Option(None, *decls, help=help_text, show_default=False),
                                        annotation=typing.Optional[typ]))
    return params


def resolve_config(model: str, out: Path, resume: bool, overrides: dict) -> TrainConfig:
    """TrainConfig from the model's defaults (fresh) or the checkpoint (resume) plus explicit options."""
    from pydantic import ValidationError

    from circuits.models.registry import BUILTIN_MODELS
    from transcoders.checkpoint import CHECKPOINT_FILE, load_checkpoint
    from transcoders.errors import TranscoderError
    from transcoders.train_config import describe_validation_error

    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        if not resume:
            builtin = BUILTIN_MODELS.get(model)
            return TrainConfig(**{**((builtin and builtin.transcoder_config) or {}), **given})
        ckpt = out / CHECKPOINT_FILE
        if not ckpt.exists():
            return TrainConfig(**given)  # prepare_out_dir reports the missing checkpoint
        saved = TrainConfig(**load_checkpoint(ckpt)[1]["train_config"])
        wanted = TrainConfig(**{**saved.model_dump(), **given})
    except ValidationError as exc:
        raise TranscoderError(describe_validation_error(exc)) from None
    diff = [k for k in given if getattr(wanted, k) != getattr(saved, k) and k not in TrainConfig.RUNTIME_FIELDS]
    if diff:
        shown = ", ".join(f"{_flag(k)} {getattr(wanted, k)} (checkpoint: {getattr(saved, k)})" for k in diff)
        raise TranscoderError(f"--resume continues the run as it was started; these differ: {shown}")
    return wanted


def run_training(model: str, out: Path, *, resume: bool, overwrite: bool, corpus: str | None,
                 log: Path | None, device: str, progress: bool, overrides: dict):
    """What `transcoders train` does, in checking order: settings, output folder, model, corpus,
    then training. Every user mistake stops with one line before anything is written."""
    from circuits.models import load_model
    from circuits.training.train import train_for_model
    from transcoders.trainer import prepare_outputs

    cfg = resolve_config(model, out, resume, overrides)
    prepare_outputs(out, cfg, resume=resume, overwrite=overwrite, log_path=log)
    loaded = load_model(model, device=device, progress=progress)
    return train_for_model(loaded, cfg, out, corpus, resume=resume, overwrite=overwrite, progress=progress,
                           log_path=log, device=device)


def _train(model: str, out: Path, resume: bool, overwrite: bool, corpus: str | None, log: Path | None,
           device: str, progress: bool, json_out: bool, **options) -> None:
    result = run_training(model, out, resume=resume, overwrite=overwrite, corpus=corpus, log=log,
                          device=pick_device(device), progress=progress, overrides=options)
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


def _train_signature() -> inspect.Signature:
    K = inspect.Parameter.KEYWORD_ONLY
    fixed = [
        inspect.Parameter("model", K, annotation=str,
                          default=typer.Option(..., "--model", help="Model: built-in name, checkpoint dir or hub id.")),
        inspect.Parameter("out", K, annotation=Path,
                          default=typer.Option(..., "--out", help="Output directory (circuit-tracer format).")),
        inspect.Parameter("resume", K, annotation=bool,
                          default=typer.Option(False, "--resume", help="Continue the run in --out from its checkpoint.")),
        inspect.Parameter("overwrite", K, annotation=bool,
                          default=typer.Option(False, "--overwrite", help="Replace an existing --out directory.")),
        inspect.Parameter("corpus", K, annotation=typing.Optional[str],
                          default=typer.Option(None, "--corpus", help="Text file (one document per line) or dataset name; "
                                               "default: the built-in model's own corpus.")),
        inspect.Parameter("log", K, annotation=typing.Optional[Path],
                          default=typer.Option(None, "--log", help="Append one JSON line of metrics per log step here.")),
        inspect.Parameter("device", K, annotation=str, default=typer.Option("auto", "--device", help="cpu, cuda or auto.")),
        inspect.Parameter("progress", K, annotation=bool,
                          default=typer.Option(True, "--progress/--no-progress", help="Show the progress bar.")),
        inspect.Parameter("json_out", K, annotation=bool,
                          default=typer.Option(False, "--json", help="Print the final metrics as JSON.")),
    ]
    return inspect.Signature(fixed + _config_parameters())


def train_cmd(**kwargs) -> None:
    """Train a cross-layer (clt) or per-layer (plt) transcoder for --model; progress shows
    tokens/s, loss, FVU and L0. Runs under torchrun for several GPUs (docs/transcoders.md).
    For built-in models (world, world-tiny) unset options take the model's default CLT
    configuration (its registry entry, circuits/models/registry.py), not the defaults listed below."""
    _train(**kwargs)


train_cmd.__signature__ = _train_signature()
app.command("train")(train_cmd)


@app.command("info")
def info_cmd(path: Path = typer.Argument(..., help="Transcoder directory."),
             json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show a transcoder directory's architecture, training config and metrics."""
    from transcoders.formats import load_transcoder, read_training_files

    tc = load_transcoder(path)
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
