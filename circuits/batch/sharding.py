"""Ranks of torch.distributed for batch work (torchrun sets RANK/WORLD_SIZE/LOCAL_RANK).

The prompts are sharded round-robin: in round r, rank k traces pending prompt r*N + k. After each
round the ranks all-gather their small manifest records (gloo, also beside NCCL on GPUs), so rank 0
writes the manifest in input order with at most one round of lag. Graph files are written by the
rank that traced them into the shared output folder (one machine, or a shared filesystem across
nodes: docs/distributed.md). Nothing but records and the pending list travels between ranks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch.distributed as dist

from transcoders.distributed import DistInfo, init_distributed, rank_device


def join(device: str) -> tuple[DistInfo, str]:
    """Join torchrun's process group (single process without it); the rank's own device.
    On CUDA the group has NCCL for tensors and gloo for the Python objects exchanged here."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized() and str(device).startswith("cuda"):
        dist.init_process_group(backend="cpu:gloo,cuda:nccl")
    info = init_distributed(device)
    return info, rank_device(device, info)


def shard(n: int, info: DistInfo) -> list[int]:
    """The positions (of n) that rank `info.rank` handles: rank, rank + N, rank + 2N, ..."""
    return list(range(info.rank, n, info.world_size))


def rounds(n: int, info: DistInfo) -> int:
    return -(-n // info.world_size)


def broadcast(obj: Any, info: DistInfo) -> Any:
    """Rank 0's object on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's object, in rank order, on every rank."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def on_rank0(fn: Callable[[], Any], info: DistInfo) -> Any:
    """Run fn on rank 0 and give its result to every rank; a user error there is raised on every
    rank (one line each, no rank left waiting in a collective)."""
    from circuits.errors import CircuitsError
    from safeio import OutputError

    result, error = None, None
    if info.is_main:
        try:
            result = fn()
        except (CircuitsError, OutputError) as err:
            error = str(err)
    result, error = broadcast((result, error), info)
    if error is not None:
        raise CircuitsError(error)
    return result


def agree(ok: bool, message: str, info: DistInfo) -> None:
    """Every rank checked something (e.g. the prompts); if any failed, all raise its message."""
    from circuits.errors import CircuitsError

    failures = [m for m in gather(None if ok else message, info) if m is not None]
    if failures:
        raise CircuitsError(failures[0])


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
