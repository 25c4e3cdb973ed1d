"""Rules for a training output folder: never lose what is already saved.

- new or empty folder: fresh run
- folder with files: refused unless --overwrite or --resume (needs checkpoint.safetensors)
- --overwrite keeps the old transcoder whole and loadable while the new one trains. The finished
  transcoder is first written complete into `<out>/.new-transcoder/` (config.yaml last), then moved
  over the old files (commit_staged). A kill during that move (a few renames) is finished by the
  next run in the folder (recover_staged); a kill before it leaves the old transcoder as it was.
- temporary files a killed run left in the folder are removed before anything else.
Only files of the transcoder format are ever removed; anything else in the folder is left alone.
"""

from __future__ import annotations

import json
import os
from fnmatch import fnmatch
from pathlib import Path

from safeio import OutputError, check_output_dir, write_bytes
from safeio.lock import is_lock_file
from safeio.write import fsync_dir, remove_stale_temps_in
from transcoders.checkpoint import CHECKPOINT_FILE
from transcoders.errors import TranscoderError
from transcoders.formats import CONFIG_YAML, METRICS_JSON, TRAINING_CONFIG_JSON

STAGING = ".new-transcoder"
MANIFEST = "manifest.json"  # in STAGING: the new transcoder's file names, written before the move
_LAYER_GLOBS = ("W_enc_*.safetensors", "W_dec_*.safetensors", "layer_*.safetensors")
_SIDE_FILES = (TRAINING_CONFIG_JSON, METRICS_JSON)
# written beside a transcoder by `circuits features index`; they describe the transcoder being
# replaced, so they go with it (a stale index would show another transcoder's contexts)
_DERIVED = ("feature_index.npz", "feature_index.json")


def prepare_out_dir(out: Path, resume: bool, overwrite: bool) -> str:
    """Returns "fresh" or "resume"; one-line TranscoderError when the folder must not be used."""
    out = Path(out)
    if resume and overwrite:
        raise TranscoderError("--resume and --overwrite exclude each other")
    try:
        check_output_dir(out, "output folder")
    except OutputError as err:
        raise TranscoderError(str(err)) from None
    if out.is_dir():
        remove_stale_temps_in(out)
        recover_staged(out)
    has_files = out.is_dir() and any(not is_lock_file(p.name) for p in out.iterdir())
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


def begin_staging(out: Path) -> Path:
    """An empty `<out>/.new-transcoder/` to save the finished transcoder into."""
    staged = Path(out) / STAGING
    if staged.exists():
        _remove_staging(staged)
    staged.mkdir(parents=True)
    return staged


def commit_staged(out: Path) -> bool:
    """Move a complete staged transcoder over the one in `out`; False if none is staged. Safe to
    run again after a kill at any point: the manifest says which files the new transcoder has."""
    out, staged = Path(out), Path(out) / STAGING
    manifest = staged / MANIFEST
    if not manifest.is_file():
        if not (staged / CONFIG_YAML).is_file():
            return False  # the staged copy is incomplete
        names = sorted(p.name for p in staged.iterdir() if p.is_file() and _is_format_file(p.name))
        write_bytes(manifest, json.dumps(names).encode(), "staging manifest")
    new_names = set(json.loads(manifest.read_text()))
    if (staged / CONFIG_YAML).exists():
        (out / CONFIG_YAML).unlink(missing_ok=True)  # first: a half-replaced folder must not load
    old = [p for pattern in _LAYER_GLOBS for p in out.glob(pattern)] + [out / n for n in _SIDE_FILES + _DERIVED]
    for path in old:
        if path.name not in new_names:
            path.unlink(missing_ok=True)
    for name in sorted(new_names - {CONFIG_YAML}):
        if (staged / name).exists():
            os.replace(staged / name, out / name)
    if (staged / CONFIG_YAML).exists():
        os.replace(staged / CONFIG_YAML, out / CONFIG_YAML)
    fsync_dir(out)
    _remove_staging(staged)
    return True


def recover_staged(out: Path) -> None:
    """Finish a move that a kill interrupted, or drop an incomplete staged transcoder."""
    staged = Path(out) / STAGING
    if not staged.is_dir():
        return
    if not commit_staged(out):
        _remove_staging(staged)


def _is_format_file(name: str) -> bool:
    return name in (CONFIG_YAML, *_SIDE_FILES) or any(fnmatch(name, g) for g in _LAYER_GLOBS)


def _remove_staging(staged: Path) -> None:
    """Remove our staging folder: only files it can hold (transcoder files, manifest, temporaries)."""
    remove_stale_temps_in(staged)
    for path in staged.iterdir():
        if path.is_file() and (path.name == MANIFEST or _is_format_file(path.name)):
            path.unlink()
    try:
        staged.rmdir()
    except OSError:
        raise TranscoderError(f"{staged} holds files this tool did not write; move them away") from None
