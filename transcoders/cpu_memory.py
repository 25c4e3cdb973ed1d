"""Keep freed CPU memory in the process while training (glibc only).

Training allocates and frees the same large [L, N, F] tensors every step. glibc serves every block
above 32 MiB with a fresh mmap and unmaps it on free, so each step pays the page faults of touching
new memory again: measured on this 2-core machine at L=4, N=4096, F=1024, an elementwise op into a
new tensor took 30 ms against 13 ms into reused heap memory. While `reuse_freed_memory()` is
active, glibc takes large blocks from the heap and does not trim it, so freed blocks are reused;
the process keeps its peak memory until the block ends. Results are unchanged (allocation only).
Elsewhere (macOS, musl, CUDA tensors) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from contextlib import contextmanager

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_GLIBC_DEFAULT_TRIM, _GLIBC_DEFAULT_MMAP_MAX = 128 * 1024, 65536


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None
    except OSError:
        return None


_active = [0]  # nesting depth of reuse_freed_memory blocks


def _keep(libc) -> None:
    libc.mallopt(_M_MMAP_MAX, 0)
    libc.mallopt(_M_TRIM_THRESHOLD, 1 << 40)


def _release(libc) -> None:
    libc.mallopt(_M_MMAP_MAX, _GLIBC_DEFAULT_MMAP_MAX)
    libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_DEFAULT_TRIM)
    if hasattr(libc, "malloc_trim"):  # hand the kept memory back now
        libc.malloc_trim(0)


@contextmanager
def reuse_freed_memory(device: str):
    """Within the block, large CPU allocations reuse freed memory instead of new mmaps."""
    libc = _libc() if str(device).startswith("cpu") else None
    if libc is None:
        yield False
        return
    _keep(libc)
    _active[0] += 1
    try:
        yield True
    finally:
        _active[0] -= 1
        _release(libc)


@contextmanager
def default_allocation():
    """Inside a reuse_freed_memory block: glibc's default behaviour again (kept memory handed back
    first) for work whose allocations vary in size, such as evaluation passes over sequences of
    different lengths; on a heap that is never trimmed those fragment it and grow the process."""
    libc = _libc() if _active[0] else None
    if libc is None:
        yield
        return
    _release(libc)
    try:
        yield
    finally:
        _keep(libc)


def release_freed_memory() -> bool:
    """Hand freed heap memory back to the system now (glibc's malloc_trim), unless a
    reuse_freed_memory block keeps it on purpose. Long traces free many medium blocks (pattern
    blocks, rows, q/k copies) between ones that stay: glibc keeps those pages resident, and the
    process's peak passes what is alive (measured: SmolLM2 at 2,000 tokens, 3.20 GiB resident
    after the forward, 2.88 GiB after this). Returns whether it ran."""
    libc = _libc() if not _active[0] else None
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    libc.malloc_trim(0)
    return True

