"""release_freed_memory (used by long traces, issue 19) trims the heap on glibc, and leaves memory
kept on purpose by reuse_freed_memory alone."""

from __future__ import annotations

import psutil
import pytest

from transcoders import cpu_memory


@pytest.mark.skipif(cpu_memory._libc() is None, reason="glibc only")
def test_freed_heap_goes_back_and_a_reuse_block_keeps_it():
    import torch

    process = psutil.Process()
    with cpu_memory.reuse_freed_memory("cpu"):
        assert not cpu_memory.release_freed_memory()  # kept on purpose inside the block
    keep = [torch.ones(1 << 18) for _ in range(64)]  # 64 x 1 MiB heap blocks ...
    junk = [torch.ones(1 << 18) for _ in range(256)]  # ... then 256 MiB freed above them
    del junk
    before = process.memory_info().rss
    assert cpu_memory.release_freed_memory()
    assert process.memory_info().rss <= before
    assert sum(float(t[0]) for t in keep) == 64
