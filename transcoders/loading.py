"""Loading transcoders in any published layout (transcoders.published reads the files; this module
makes the module a caller asked for): a memory-mapped LazyTranscoder or an in-memory Transcoder,
and the check that every weight is usable.

    tc = load_transcoder("path/or/owner/repo", lazy=True)
"""

from __future__ import annotations

from pathlib import Path

import torch

from transcoders.config import TranscoderConfig
from transcoders.lazy import LazyTranscoder
from transcoders.published import read_published
from transcoders.transcoder import Transcoder
from transcoders.weights_check import check_finite


def load_transcoder(path: str | Path, device: str | torch.device = "cpu", lazy: bool = False,
                    dtype: torch.dtype = torch.float32):
    """Load transcoders as circuit-tracer does: a local directory, a hub repo id (owner/repo[/sub][@rev]),
    or a config.yaml. Lazy (`lazy=True`, what tracing uses): a LazyTranscoder over the memory-mapped
    files, weights kept in their dtype and cast to `dtype` per use. Not lazy: an in-memory
    `Transcoder` in `dtype`."""
    pub = read_published(path)
    if lazy:
        return LazyTranscoder(pub.cfg, pub.layers, source=pub.source, dtype=dtype, device=device)
    return materialise(pub.cfg, pub.layers, dtype).to(device)


def materialise(cfg: TranscoderConfig, layers, dtype: torch.dtype = torch.float32) -> Transcoder:
    """An in-memory Transcoder from per-layer views (reads every tensor)."""
    def stack(key):  # torch.stack copies: the Transcoder never aliases a file mapping
        return torch.stack([getattr(lv, key).to(dtype) for lv in layers])

    tc = Transcoder(cfg, dtype=dtype, device="meta")
    state = {"W_enc": stack("enc"), "b_enc": stack("b_enc"), "b_dec": stack("b_dec")}
    state.update({f"W_dec.{i}": lv.dec.to(dtype, copy=True).contiguous() for i, lv in enumerate(layers)})
    if cfg.activation == "jumprelu":
        state["threshold"] = stack("threshold")
    if cfg.skip:
        state["W_skip"] = stack("skip")
    tc.load_state_dict(state, assign=True)
    return tc


def check_transcoder_weights(path) -> None:
    """Read the transcoder at `path` (directory, config.yaml or hub id) and check every weight."""
    check_finite(read_published(path).layers)
