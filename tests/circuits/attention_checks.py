"""Shared pieces of the attention tests: head loadings of every edge of an Attribution."""

from __future__ import annotations

import torch

from circuits.attention.loadings import EdgeLoadings, head_loadings
from circuits.attribution.rows import Attribution
from circuits.attribution.frozen_backward import FrozenBlocks
from circuits.attribution.targets import TargetSeeds, feature_seeds, logit_seeds


def target_seeds(attr: Attribution, blocks: FrozenBlocks, transcoder) -> TargetSeeds:
    """The seeds of the attribution's target rows: chosen features, then logits."""
    fs = feature_seeds(attr.rep, blocks, transcoder, attr.feature_idx)
    ls = logit_seeds(attr.rep, blocks, attr.logits)
    return TargetSeeds(torch.cat([fs.layer, ls.layer]), torch.cat([fs.position, ls.position]),
                       torch.cat([fs.vec_d, ls.vec_d]))


def all_edge_loadings(model, transcoder, attr: Attribution, blocks: FrozenBlocks | None = None, rep=None,
                      max_edges: int = 20_000) -> tuple[EdgeLoadings, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loadings of the nonzero edges (at most `max_edges`: half cross-position, half same-position) of `attr`,
    computed with `blocks` / `rep` (the real ones unless a test swaps in a mutated one).
    Returns (loadings, rows [n_targets, n_sources], target index [E], source column [E])."""
    real_blocks = FrozenBlocks(model)
    blocks = blocks or real_blocks
    rep = rep or attr.rep
    rows = torch.cat([attr.feature_rows, attr.logit_rows])
    t, s = rows.nonzero(as_tuple=True)
    seeds = target_seeds(attr, real_blocks, transcoder)
    layout = attr.layout
    src_pos = torch.cat([attr.rep.features.position, torch.arange(1, rep.n_pos).repeat(layout.n_layers),
                         torch.arange(rep.n_pos)])
    cross = seeds.position[t] != src_pos[s]
    keep = torch.cat([cross.nonzero(as_tuple=True)[0][:max_edges // 2],
                      (~cross).nonzero(as_tuple=True)[0][:max_edges // 2]])
    t, s = t[keep], s[keep]
    loads = head_loadings(rep, blocks, transcoder, layout, seeds, torch.arange(layout.n_sources), t, s)
    return loads, rows, t, s


def loading_gap(loads: EdgeLoadings, rows: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> float:
    """max over edges of |sum of loadings + remainder - edge| / (largest |edge| of its target row)."""
    total = loads.loadings_e_l_h.sum((1, 2)) + loads.remainder_e
    scale = rows.abs().amax(1)[t].clamp_min(1e-12)
    return float(((total - rows[t, s]).abs() / scale).max())
