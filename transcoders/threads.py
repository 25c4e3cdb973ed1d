"""How many CPU threads to run with, for training and for attribution.

On a machine whose cores are shared with other work, multi-threaded kernels spend their time
waiting for each other (measured here: 2 threads 2.4x slower than 1 on a busy 2-core machine).
Training: `pick_threads` times a step-sized workload at 1 thread and at torch's default and keeps
the faster; `TrainConfig.threads` overrides it. Attribution: `free_core_threads` gives torch the
cores that are free now and re-checks between batches (`AdaptiveThreads`).
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from pathlib import Path

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


# --- threads for the cores free right now (attribution, forward passes) ------------------------
#
# Why a busy machine collapses multi-threaded work: every torch op on the intra-op (OpenMP) pool
# ends at a barrier, so it finishes only when its slowest thread does. When another process holds
# one of the cores, the thread the scheduler puts beside it runs only in its time slices, and every
# one of the thousands of small ops of an attribution sweep waits for that thread's next slice.
# With fewer threads than free cores no thread waits for a slice. So: count the cores other
# processes used over a recent window (per-CPU busy time from /proc/stat minus our own CPU time)
# and run with the cores that are left, re-checked as the work goes on.

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
MIN_WINDOW_SECONDS = 0.05


def allowed_cores() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


def _busy_seconds(cpus: set[int] | None) -> float | None:
    """Seconds the CPUs in `cpus` (all when None) spent busy since boot, from /proc/stat."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    total = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
        total += user + nice + system + irq + softirq + steal
    return total / _CLOCK_TICKS


class CoreShare:
    """How many of the allowed cores other processes are using, measured over windows.

    Each call of `others_busy()` covers the time since the previous one: the allowed CPUs' busy
    time minus this process's own CPU time, per second of wall time."""

    def __init__(self):
        try:
            self.cpus = set(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            self.cpus = None
        self._snap = self._read()

    def _read(self):
        return time.monotonic(), _busy_seconds(self.cpus), time.process_time()

    def window_seconds(self) -> float:
        return time.monotonic() - self._snap[0]

    def others_busy(self) -> float | None:
        """Cores used by other processes since the last call (None where /proc/stat is missing)."""
        (t0, busy0, own0), (t1, busy1, own1) = self._snap, self._read()
        self._snap = (t1, busy1, own1)
        if busy0 is None or busy1 is None or t1 <= t0:
            return None
        return max(0.0, ((busy1 - busy0) - (own1 - own0)) / (t1 - t0))


def threads_for_free_cores(others_busy: float | None, ceiling: int) -> int:
    """Threads for the cores left free: allowed cores minus the others' share, rounded, in
    [1, ceiling]; the ceiling when nothing is known."""
    if others_busy is None:
        return ceiling
    free = allowed_cores() - others_busy
    return max(1, min(ceiling, int(free + 0.5)))


class AdaptiveThreads:
    """Keeps torch's thread count at the cores free now; `recheck()` between units of work."""

    def __init__(self, ceiling: int):
        self.ceiling = ceiling
        self.share = CoreShare() if ceiling > 1 else None
        self.history: list[int] = []

    def start(self) -> int:
        if self.share is not None:
            time.sleep(MIN_WINDOW_SECONDS)  # a first window, with this process idle
        return self._apply()

    def recheck(self) -> int:
        if self.share is None or self.share.window_seconds() < MIN_WINDOW_SECONDS:
            return torch.get_num_threads()
        return self._apply()

    def _apply(self) -> int:
        n = self.ceiling if self.share is None else threads_for_free_cores(self.share.others_busy(), self.ceiling)
        if n != torch.get_num_threads():
            torch.set_num_threads(n)
        if not self.history or self.history[-1] != n:
            self.history.append(n)
        return n


@contextmanager
def free_core_threads(requested: int | None = None):
    """Run the block on the cores free now (at most torch's current count, or `requested` threads
    exactly); yields the AdaptiveThreads (call `.recheck()` between batches). Restores the count."""
    before = torch.get_num_threads()
    adaptive = AdaptiveThreads(requested or before)
    if requested:
        adaptive.share = None
    adaptive.start()
    try:
        yield adaptive
    finally:
        torch.set_num_threads(before)
