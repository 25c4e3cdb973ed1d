"""How many CPU threads to train with.

On a machine whose cores are shared with other work, multi-threaded kernels on the small tensors
of transcoder training spend their time waiting for each other (measured here: 2 threads 2.4x
slower than 1 on a busy 2-core machine). `pick_threads` times a step-sized workload at 1 thread
and at torch's default and keeps the faster; `TrainConfig.threads` overrides it.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch


def _workload_seconds(n_threads: int, reps: int = 3) -> float:
    torch.set_num_threads(n_threads)
    a, b = torch.randn(1024, 256), torch.randn(256, 1024)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        h = a @ b
        (h * (h > 0.5)).sum()
        torch.tanh(h).mul_(h).sum(0)
        best = min(best, time.perf_counter() - t0)
    return best


def pick_threads(device: str) -> int:
    """The faster of 1 and torch's default thread count for a step-sized CPU workload."""
    default = torch.get_num_threads()
    if not str(device).startswith("cpu") or default <= 1:
        return default
    try:
        single, multi = _workload_seconds(1), _workload_seconds(default)
    finally:
        torch.set_num_threads(default)
    return 1 if single < multi else default


@contextmanager
def training_threads(requested: int | None, device: str):
    """Run the block with the chosen thread count; restore torch's setting afterwards."""
    before = torch.get_num_threads()
    n = requested or pick_threads(device)
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)
