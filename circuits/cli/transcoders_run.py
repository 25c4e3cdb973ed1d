"""What `circuits transcoders train` does, in checking order: settings, output folder, model,
corpus, then training. Every user mistake stops with one line before anything is written."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from transcoders.errors import TranscoderError
from transcoders.train_config import TrainConfig, describe_validation_error


def resolve_config(model: str, out: Path, resume: bool, overrides: dict) -> TrainConfig:
    """TrainConfig from the model's defaults (fresh) or the checkpoint (resume) plus explicit options."""
    from circuits.default_transcoders import DEFAULT_TRAIN_CONFIGS
    from transcoders.checkpoint import CHECKPOINT_FILE, load_checkpoint

    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        if not resume:
            return TrainConfig(**{**DEFAULT_TRAIN_CONFIGS.get(model, {}), **given})
        ckpt = out / CHECKPOINT_FILE
        if not ckpt.exists():
            return TrainConfig(**given)  # prepare_out_dir reports the missing checkpoint
        saved = TrainConfig(**load_checkpoint(ckpt)[1]["train_config"])
        wanted = TrainConfig(**{**saved.model_dump(), **given})
    except ValidationError as exc:
        raise TranscoderError(describe_validation_error(exc)) from None
    diff = [k for k in given if getattr(wanted, k) != getattr(saved, k) and k not in TrainConfig.RUNTIME_FIELDS]
    if diff:
        from circuits.cli.transcoders import _flag

        shown = ", ".join(f"{_flag(k)} {getattr(wanted, k)} (checkpoint: {getattr(saved, k)})" for k in diff)
        raise TranscoderError(f"--resume continues the run as it was started; these differ: {shown}")
    return wanted


def run_training(model: str, out: Path, *, resume: bool, overwrite: bool, corpus: str | None,
                 log: Path | None, device: str, progress: bool, overrides: dict):
    from circuits.models import load_model
    from circuits.transcoder_training import train_for_model
    from transcoders.trainer import prepare_outputs

    cfg = resolve_config(model, out, resume, overrides)
    prepare_outputs(out, cfg, resume=resume, overwrite=overwrite, log_path=log)
    loaded = load_model(model, device=device, progress=progress)
    return train_for_model(loaded, cfg, out, corpus, resume=resume, overwrite=overwrite, progress=progress,
                           log_path=log, device=device)
