"""Does a transcoder fit a model? Layers, residual width and hook names, checked with one-line errors."""

from __future__ import annotations

from pathlib import Path

from circuits.errors import CircuitsError


def check_transcoder_fits(model, transcoder, source: str | Path = "the transcoder") -> None:
    """Raise CircuitsError unless `transcoder` (a transcoders.Transcoder) fits `model` (a HookedTransformer)."""
    mcfg, tcfg = model.cfg, transcoder.cfg
    if tcfg.n_layers != mcfg.n_layers:
        raise CircuitsError(f"{source} has {tcfg.n_layers} layers but the model has {mcfg.n_layers}")
    if tcfg.d_model != mcfg.d_model:
        raise CircuitsError(f"{source} has width d_model={tcfg.d_model} but the model has {mcfg.d_model}")
    for role, hook in (("input", tcfg.input_hook), ("output", tcfg.output_hook)):
        name = f"blocks.0.{hook}"
        if name not in model.hook_dict:
            raise CircuitsError(f"{source} {role} hook '{hook}' does not exist in the model (no {name})")


def load_fitting_transcoder(model, path: str | Path, device: str = "cpu"):
    """Load a transcoder directory and check it fits `model`."""
    from transcoders.formats import load_transcoder

    tc = load_transcoder(path, device=device)
    check_transcoder_fits(model, tc, source=f"transcoder directory {path}")
    return tc
