"""The dtype a model is loaded and run in (`--dtype`): float32 by default, bfloat16 or float16.

Only the model's weights and its forward pass use it. Transcoders keep their files' dtype and are
cast to float32 per use, and attribution (the frozen backward and every edge) runs in float32 on
activations captured from the model's forward (docs/attribution.md, "Precision").
(No torch import at module level: the CLI checks --dtype before loading anything.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from circuits.errors import CircuitsError

if TYPE_CHECKING:
    import torch

DTYPE_NAMES = ("float32", "bfloat16", "float16")
ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


def dtype_name(value: str | torch.dtype | None) -> str:
    """The canonical name ('float32', 'bfloat16', 'float16') of a --dtype value (a name, an alias or
    a torch.dtype; None is float32); anything else is one CircuitsError line."""
    if value is None:
        return "float32"
    text = str(value).lower().removeprefix("torch.")
    name = ALIASES.get(text, text)
    if name not in DTYPE_NAMES:
        raise CircuitsError(f"--dtype must be one of {', '.join(DTYPE_NAMES)} (got {str(value)!r})")
    return name


def model_dtype(value: str | torch.dtype | None) -> torch.dtype:
    """The torch dtype of a --dtype value (see dtype_name)."""
    import torch

    return getattr(torch, dtype_name(value))
