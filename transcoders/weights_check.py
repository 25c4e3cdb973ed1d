"""Is a transcoder's data usable? Floating-point weights (cheap: dtypes only) and finite weights
(one pass over every tensor, chunk by chunk from the mapped files, so no more memory than a chunk).

A transcoder file with integer weights would be cast silently and give wrong answers; NaN or
infinite weights give NaN metrics and graphs. Both are one-line TranscoderErrors naming the file.
"""

from __future__ import annotations

import torch

from transcoders.errors import TranscoderError
from transcoders.formats_read import LayerViews

_TENSORS = ("enc", "dec", "b_enc", "b_dec", "threshold", "skip")
ROWS_PER_CHUNK = 4096


def _where(lv: LayerViews, layer: int) -> str:
    return ", ".join(str(f) for f in lv.files) or f"layer {layer}"


def check_dtypes(layers: list[LayerViews]) -> None:
    """Every weight tensor is floating point."""
    for layer, lv in enumerate(layers):
        for name in _TENSORS:
            t = getattr(lv, name)
            if t is not None and not t.is_floating_point():
                raise TranscoderError(f"{_where(lv, layer)}: '{name}' of layer {layer} is {str(t.dtype)[6:]}, "
                                      "not floating point: not usable transcoder weights")


def check_finite(layers: list[LayerViews]) -> None:
    """Every weight is finite (reads each tensor once, in row chunks)."""
    from transcoders.tensor_files import release

    check_dtypes(layers)
    for layer, lv in enumerate(layers):
        for name in _TENSORS:
            t = getattr(lv, name)
            if t is None:
                continue
            rows = t.reshape(1, -1) if t.dim() < 2 else t
            for start in range(0, rows.shape[0], ROWS_PER_CHUNK):
                if not torch.isfinite(rows[start:start + ROWS_PER_CHUNK]).all():
                    raise TranscoderError(f"{_where(lv, layer)}: '{name}' of layer {layer} has NaN or infinite "
                                          "weights: the transcoder is corrupt (train it again or download it again)")
        for path in lv.files:
            release(path)
