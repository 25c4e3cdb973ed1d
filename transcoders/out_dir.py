"""Rules for a training output folder: never lose what is already saved.

- new or empty folder: fresh run
- folder with files: refused unless --overwrite (fresh run; the old transcoder files are removed
  only once the new run has validated its data) or --resume (needs checkpoint.safetensors)
"""

from __future__ import annotations

from pathlib import Path

from transcoders.checkpoint import CHECKPOINT_FILE
from transcoders.errors import TranscoderError
from transcoders.formats import CONFIG_YAML, METRICS_JSON, TRAINING_CONFIG_JSON

_OURS = (CONFIG_YAML, TRAINING_CONFIG_JSON, METRICS_JSON, CHECKPOINT_FILE)
_LAYER_GLOBS = ("W_enc_*.safetensors", "W_dec_*.safetensors", "layer_*.safetensors")


def prepare_out_dir(out: Path, resume: bool, overwrite: bool, clear: bool = False) -> str:
    """Returns "fresh" or "resume"; with clear=True removes a previous transcoder's files."""
    if resume and overwrite:
        raise TranscoderError("--resume and --overwrite exclude each other")
    if clear:
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_YAML).unlink(missing_ok=True)  # first: a half-cleared folder must not load
        for name in _OURS:
            (out / name).unlink(missing_ok=True)
        for pattern in _LAYER_GLOBS:
            for p in out.glob(pattern):
                p.unlink()
        return "fresh"
    if out.exists() and not out.is_dir():
        raise TranscoderError(f"output path {out} exists and is not a directory")
    has_files = out.is_dir() and any(out.iterdir())
    if resume:
        if (out / CHECKPOINT_FILE).exists():
            return "resume"
        if (out / CONFIG_YAML).exists():
            raise TranscoderError(f"training in {out} already finished; nothing to resume")
        raise TranscoderError(f"no checkpoint in {out} to resume from")
    if has_files and not overwrite:
        raise TranscoderError(f"output directory {out} already exists: pass --overwrite to replace it "
                              "or --resume to continue its training")
    return "fresh"
