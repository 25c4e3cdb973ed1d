"""Does a transcoder fit a model? Layers, residual width and hook names, checked with one-line errors."""

from __future__ import annotations

from pathlib import Path

from circuits.errors import CircuitsError


def check_transcoder_fits(model, transcoder, source: str | Path = "the transcoder") -> None:
    """Raise CircuitsError unless `transcoder` (a transcoders.Transcoder) fits `model` (a HookedTransformer)."""
    from circuits.published_hooks import check_hooks

    mcfg, tcfg = model.cfg, transcoder.cfg
    other = "they were made for another model: pass the --model they belong to"
    if tcfg.n_layers != mcfg.n_layers:
        raise CircuitsError(f"{source} has {tcfg.n_layers} layers but the model has {mcfg.n_layers}: {other}")
    if tcfg.d_model != mcfg.d_model:
        raise CircuitsError(f"{source} has width d_model={tcfg.d_model} but the model has {mcfg.d_model}: {other}")
    check_hooks(model, transcoder, source)


def load_fitting_transcoder(model, path: str | Path, device: str = "cpu"):
    """Load a transcoder directory and check it fits `model`."""
    from transcoders.formats import load_transcoder

    from circuits.published_hooks import adapt_hooks

    tc = load_transcoder(path, device=device, lazy=True)
    source = getattr(tc, "source", "") or f"transcoder directory {path}"
    if (tc.cfg.n_layers, tc.cfg.d_model) == (model.cfg.n_layers, model.cfg.d_model):
        adapt_hooks(model, tc, source)
    check_transcoder_fits(model, tc, source=source)
    return tc
