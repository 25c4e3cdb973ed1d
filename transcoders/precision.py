"""Which precision the model's forward passes run in while collecting training activations.

bfloat16 autocast halves the forward's cost on CPUs with bf16 matrix units (AMX, AVX512-BF16) and
on GPUs, but a CPU without them emulates it: measured on a 2-core AVX2 machine, a [2048, 576] x
[576, 1536] matmul took 64x longer and SmolLM2's forward 5.8x longer (benchmarks/forward_dtype.py),
which turned a 13-minute first use into 55 minutes. `activation_dtype="auto"` therefore measures:
it times a forward-sized matmul both ways on this device and keeps bfloat16 only where it is
faster. The choice is per process and device (cached); the trainer records the one it used.
"""

from __future__ import annotations

import time
from functools import lru_cache

import torch

AUTO = "auto"
# The probe: one MLP-sized product (tokens x d_model x d_mlp of SmolLM2), timed REPS times each way.
PROBE_SHAPE = (512, 576, 1536)
REPS = 3


def _timer(device: torch.device, bfloat16: bool):
    """A function timing one forward-sized product (the first call warms the kernels up)."""
    n, d, m = PROBE_SHAPE
    a, w = torch.randn(n, d, device=device), torch.randn(d, m, device=device)

    def seconds() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bfloat16):
            float((a @ w).float().sum())  # float(): waits for the device
        return time.perf_counter() - start

    seconds()
    return seconds


@lru_cache(maxsize=None)
def _measured_choice(device: str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "float32"
    try:
        f32 = _timer(dev, False)
        f32_best = min(f32() for _ in range(REPS))
        bf16 = _timer(dev, True)
        bf16_best = float("inf")
        for _ in range(REPS):
            bf16_best = min(bf16_best, bf16())
            if bf16_best > 2 * f32_best:  # emulated: clearly slower, no need to time it again
                break
    except RuntimeError:  # autocast to bfloat16 is not available on this device
        return "float32"
    return "bfloat16" if bf16_best < f32_best else "float32"


def resolve_activation_dtype(requested: str, device: str | torch.device) -> str:
    """`requested` unless it is "auto"; then "bfloat16" where a forward-sized product runs faster
    under bfloat16 autocast than in float32 on `device`, else "float32"."""
    if requested != AUTO:
        return requested
    return _measured_choice(str(torch.device(device)))
