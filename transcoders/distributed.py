"""Data-parallel training under torchrun: DistributedDataParallel, gloo on CPU, nccl on GPU.

Every rank builds the same shuffle buffer (same seed, same corpus) and takes its slice of each
global batch; DDP averages gradients, so N ranks with batch B/N each follow the single-process run
with batch B (up to float reduction order). Metrics and firing counts are summed over ranks.
Only rank 0 writes checkpoints and the final transcoder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> DistInfo:
    """Join the process group torchrun set up (env RANK/WORLD_SIZE); single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if str(device).startswith("cuda"):
        torch.cuda.set_device(info.local_rank)
    return info


def rank_device(device: str, info: DistInfo) -> str:
    """cuda -> cuda:<local rank> under torchrun."""
    if str(device) == "cuda" and info.enabled:
        return f"cuda:{info.local_rank}"
    return str(device)


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_flag(flag: bool, info: DistInfo, device="cpu") -> bool:
    """Rank 0's decision, on every rank (e.g. 'write a checkpoint now')."""
    if not info.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def wrap_ddp(module: torch.nn.Module, info: DistInfo, device: str) -> torch.nn.Module:
    if not info.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [torch.device(device).index] if str(device).startswith("cuda") else None
    return DDP(module, device_ids=ids)
