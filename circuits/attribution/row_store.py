"""The rows of the visited features while influence chooses them (METHOD.md section 3; issue 19).

Influence ordering (circuits.attribution.influence) reads each visited feature's row on every
active feature; the finished graph needs only the chosen features' columns, the errors and the
tokens. A feature at layer l has no edge from a feature at layer >= l, and the active features are
sorted by layer, so the feature part of its row is the prefix [0, layer_start[l]) of the columns:
the store keeps, per block of rows (one layer's rows of a backward batch), that prefix and the error and token
columns in float32 (exact: the edges are these numbers), and caches each row's L1 norm over all
sources, which influence divides by in every round.

Shapes: B rows of a block, n_f active features, n_rest = errors + tokens, V visited rows (in the
order they were added).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_F32 = 4


@dataclass
class RowBlock:
    idx: torch.Tensor  # [B] the rows' features (indices into rep.features)
    features_b_prefix: torch.Tensor  # [B, prefix] edges from the features below the block's top layer
    rest_b_r: torch.Tensor  # [B, n_rest] edges from errors and tokens
    inv_norm_b: torch.Tensor  # [B] 1 / sum_s |A[t, s]| (all sources)
    feature_share_b: torch.Tensor  # [B] sum over features of |A[t, f]| / sum_s |A[t, s]|


class RowStore:
    """Visited feature rows in blocks, with what influence needs cached."""

    def __init__(self, feature_layer: torch.Tensor, n_layers: int, n_sources: int):
        self.n_features = int(feature_layer.shape[0])
        self.n_rest = n_sources - self.n_features
        # layer_start[l] = number of active features below layer l (the prefix a layer-l row needs)
        counts = torch.bincount(feature_layer.cpu(), minlength=n_layers + 1)
        self.layer_start = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]).tolist()
        self.feature_layer = feature_layer
        self.blocks: list[RowBlock] = []
        self.n_rows = 0
        self.nbytes = 0
        self._abs = torch.empty(0, device=feature_layer.device)  # reused |block| buffer

    def prefix(self, idx: torch.Tensor) -> int:
        """Feature columns kept for a block of rows `idx`: those below its top layer."""
        return self.layer_start[int(self.feature_layer[idx].max())] if len(idx) else 0

    def row_bytes(self, idx: torch.Tensor) -> torch.Tensor:
        """[len(idx)] bytes each row of `idx` takes here (rows are stored in blocks of one layer)."""
        start = torch.tensor(self.layer_start, device=idx.device)[self.feature_layer[idx]]
        return (start + self.n_rest + 2) * _F32

    def add(self, idx: torch.Tensor, rows_b_s: torch.Tensor) -> None:
        """Keep the rows [B, n_sources] of features `idx` (one backward batch), a block per layer."""
        layer = self.feature_layer[idx]
        for l in layer.unique().tolist():
            r = (layer == l).nonzero(as_tuple=True)[0]
            self._add_block(idx[r], rows_b_s[r], self.layer_start[l])

    def _add_block(self, idx: torch.Tensor, rows_b_s: torch.Tensor, p: int) -> None:
        assert not rows_b_s[:, p:self.n_features].any(), "a row has an edge from its own layer or above"
        norm = rows_b_s.abs().sum(1)
        inv_norm = 1.0 / norm.clamp_min(1e-30)
        share = rows_b_s[:, :p].abs().sum(1) * inv_norm
        block = RowBlock(idx.clone(), rows_b_s[:, :p].clone(), rows_b_s[:, self.n_features:].clone(), inv_norm, share)
        self.blocks.append(block)
        self.n_rows += len(idx)
        self.nbytes += int(self.row_bytes(idx).sum())

    @property
    def visited(self) -> torch.Tensor:
        """[V] the stored rows' features, in the order added."""
        if not self.blocks:
            return torch.empty(0, dtype=torch.long, device=self.feature_layer.device)
        return torch.cat([b.idx for b in self.blocks])

    @property
    def feature_share(self) -> torch.Tensor:
        return torch.cat([b.feature_share_b for b in self.blocks])

    def _abs_of(self, block: RowBlock) -> torch.Tensor:
        n = block.features_b_prefix.numel()
        if self._abs.numel() < n:
            self._abs = torch.empty(n, device=block.features_b_prefix.device)
        out = self._abs[:n].view_as(block.features_b_prefix)
        return torch.abs(block.features_b_prefix, out=out)

    def flow(self, coeff_r_v: torch.Tensor) -> torch.Tensor:
        """coeff @ A_hat[V, :n_f] [R, n_f], A_hat = |rows| normalised to sum 1 over all sources,
        one block at a time through one reused buffer."""
        out = torch.zeros(coeff_r_v.shape[0], self.n_features, device=coeff_r_v.device)
        offset = 0
        for b in self.blocks:
            B, p = b.features_b_prefix.shape
            scale_r_b = coeff_r_v[:, offset:offset + B] * b.inv_norm_b
            offset += B
            if p:
                out[:, :p].addmm_(scale_r_b, self._abs_of(b))
        return out

    def square(self) -> torch.Tensor:
        """A_hat among the visited rows [V, V]: row i's normalised |edge| from visited feature j."""
        v = self.visited
        out = torch.zeros(len(v), len(v), device=v.device)
        offset = 0
        for b in self.blocks:
            B, p = b.features_b_prefix.shape
            below = (v < p).nonzero(as_tuple=True)[0]
            out[offset:offset + B, below] = b.features_b_prefix[:, v[below]].abs() * b.inv_norm_b[:, None]
            offset += B
        return out

    def chosen_rows(self, chosen: torch.Tensor) -> torch.Tensor:
        """The stored rows of `chosen` (sorted feature indices, all stored) over the graph's source
        columns (the chosen features, then errors and tokens) [n_chosen, n_chosen + n_rest]."""
        n = len(chosen)
        out = torch.empty(n, n + self.n_rest, device=chosen.device)
        for b in self.blocks:
            p = b.features_b_prefix.shape[1]
            rows = torch.searchsorted(chosen, b.idx)
            below = int(torch.searchsorted(chosen, torch.tensor(p, device=chosen.device)))
            out[rows, :below] = b.features_b_prefix[:, chosen[:below]]
            out[rows, below:n] = 0.0
            out[rows, n:] = b.rest_b_r
        return out
