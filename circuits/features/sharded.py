"""The feature index built over torch.distributed ranks (issue 21):
`torchrun --nproc-per-node N -m circuits features index ...`.

Every rank reads the same corpus and cuts the same batches; batch j is run (forward pass and
encoders) by rank j mod N: round r holds batches r*N .. r*N + N - 1. Exactness, piece by piece:

- counts, activation sums, token and document counts: after each round the ranks all-gather their
  batch's [L, F] float64 counts and sums (zeros for a rank without a batch), and every rank adds
  them in batch order, the order one process adds them in: the same float64 additions, bit for bit.
- top-K contexts: each rank keeps the top K of its batches under a total order (largest
  activation, then earliest batch and rank: circuits.features.index._RunningTopK); the top K of a
  union under a total order is the top K of the parts' top Ks, so one all-gather of the ranks' top
  Ks at the end and one merge give exactly the one-process index.

Communication: per round 2 x L x F x 8 bytes per rank (gloo; CPU tensors, also beside NCCL), at the
end the ranks' top K tensors (about the index's size per rank). Rank 0 saves the index.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch


@dataclass
class BatchCounts:
    count_l_f: torch.Tensor  # float64 [L, F] tokens on which each feature fired
    sum_l_f: torch.Tensor  # float64 [L, F] sum of its activations
    n_tokens: int
    n_docs: int


def _ranks(info) -> tuple[int, int]:
    return (info.rank, info.world_size) if info is not None and info.enabled else (0, 1)


def my_batches(batches: Iterable, info) -> Iterator[tuple[int, object]]:
    """(batch index, batch) for this rank's batches and (index, None) for a round's slot of another
    rank, so every rank takes part in every round (the last round may be short: None then too)."""
    rank, world = _ranks(info)
    if world == 1:
        yield from enumerate(batches)
        return
    round_: list = []
    for j, batch in enumerate(batches):
        round_.append(batch)
        if len(round_) == world:
            yield j - world + 1 + rank, round_[rank]
            round_ = []
    if round_:
        j0 = j - len(round_) + 1
        yield j0 + rank, round_[rank] if rank < len(round_) else None


def round_counts(part: BatchCounts | None, info, n_layers: int, n_features: int) -> list[BatchCounts]:
    """This round's BatchCounts of every rank, in batch (= rank) order; one process: [part]."""
    rank, world = _ranks(info)
    if world == 1:
        return [part]
    import torch.distributed as dist

    if part is None:  # a short last round: zeros (adding +0.0 leaves a float64 sum as it is)
        zeros = torch.zeros(n_layers, n_features, dtype=torch.float64)
        part = BatchCounts(zeros, zeros.clone(), 0, 0)
    mine = torch.stack([part.count_l_f, part.sum_l_f])
    sizes = torch.tensor([part.n_tokens, part.n_docs], dtype=torch.float64)
    packed = torch.cat([mine.flatten(), sizes])
    got = [torch.empty_like(packed) for _ in range(world)]
    dist.all_gather(got, packed)
    out = []
    for g in got:
        stats = g[:-2].view(2, n_layers, n_features)
        n_tok, n_doc = int(g[-2]), int(g[-1])
        if n_doc:
            out.append(BatchCounts(stats[0], stats[1], n_tok, n_doc))
    return out


def merge_ranks(top, info) -> None:
    """Replace `top` (a _RunningTopK) on every rank by the merge of all ranks' top Ks."""
    rank, world = _ranks(info)
    if world == 1:
        return
    import torch.distributed as dist

    parts = {}
    for name in ("acts_k_l_f", "keys_k_l_f", "tokens_k_l_f_w", "window_k_l_f_w"):
        mine = getattr(top, name).contiguous()
        got = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(got, mine)
        parts[name] = got
    # start from rank 0's top K, then merge the others' (the order of merging does not matter)
    for name in parts:
        setattr(top, name, parts[name][0])
    for r in range(1, world):
        top.merge(parts["acts_k_l_f"][r], parts["keys_k_l_f"][r], parts["tokens_k_l_f_w"][r],
                  parts["window_k_l_f_w"][r])
