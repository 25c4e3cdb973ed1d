"""Splitting ONE prompt's attribution rows over torch.distributed ranks (issue 21).

Under `torchrun ... -m circuits trace PROMPT` every rank builds the same local replacement model
and the same targets; each call of the engine's batch loop (`_rows_in_batches`) gives batch j to
rank j mod N, and after the loop the ranks all-gather the rows so every rank holds all of them.
Batches keep their single-process composition, so every row is computed by exactly the same
arithmetic as in one process, and the rows (hence the influence-ordered choice of features, made
on every rank from identical rows, and the edges) are identical to one process, bit for bit.

The split is passed down as a context (`with split_rows(RowSplit(rank, world)): trace_prompt(...)`)
so the public path `trace_prompt(rm, prompt, config)` stays as it is.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch

_CURRENT: ContextVar[RowSplit | None] = ContextVar("row_split", default=None)


@dataclass(frozen=True)
class RowSplit:
    """This rank's share of each batch loop: batch j is computed by rank j mod world_size."""

    rank: int
    world_size: int

    def mine(self, batch: int) -> bool:
        return batch % self.world_size == self.rank

    def owner_rows(self, order: torch.Tensor, batches: list[slice]) -> list[torch.Tensor]:
        """Per rank, the row indices (into the loop's output) it computed, in batch order."""
        out = []
        for r in range(self.world_size):
            parts = [order[sl] for j, sl in enumerate(batches) if j % self.world_size == r]
            out.append(torch.cat(parts) if parts else order[:0])
        return out

    def gather(self, out: torch.Tensor, order: torch.Tensor, batches: list[slice]) -> None:
        """Fill every rank's rows of `out` [n, n_sources] from the rank that computed them."""
        owners = self.owner_rows(order, batches)
        width = max(len(o) for o in owners)
        mine = torch.zeros(width, out.shape[1], dtype=out.dtype, device=out.device)
        mine[:len(owners[self.rank])] = out[owners[self.rank]]
        for r, block in enumerate(self.all_gather(mine)):
            if r != self.rank:
                out[owners[r]] = block[:len(owners[r])]

    def all_gather(self, block: torch.Tensor) -> list[torch.Tensor]:
        import torch.distributed as dist

        blocks = [torch.empty_like(block) for _ in range(self.world_size)]
        dist.all_gather(blocks, block)
        return blocks


def current_row_split() -> RowSplit | None:
    return _CURRENT.get()


@contextmanager
def split_rows(split: RowSplit | None):
    """Within this block the engine's row batches are split as `split` says (None: not split)."""
    token = _CURRENT.set(split if split is not None and split.world_size > 1 else None)
    try:
        yield
    finally:
        _CURRENT.reset(token)
