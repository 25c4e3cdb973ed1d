"""Streamed rows: influence ordering in memory that does not grow with chosen x active (issue 19).

The exact row store (circuits.attribution.row_store) keeps every visited row over the features
below its layer: at 2,000 tokens of SmolLM2 a row is up to 3.9M floats, so the store decides how
many features a budget can choose. When it does not fit, the trace streams instead:

- phase 1 (this store): each visited row is read once, as its backward batch produces it, and
  only what influence ordering needs is kept: the row's STREAM_ROW_ENTRIES largest |edges| from
  features (normalised by the row's L1 norm over ALL sources, computed exactly) with their
  columns, and its exact feature share. Influence (circuits.attribution.influence) runs on this
  sketch unchanged: the visited block and the flow to every feature read the kept entries.
- phase 2 (the engine): the rows of the final chosen set are recomputed by the same backward
  sweeps and kept over the graph's columns only (chosen features, errors, tokens): every edge of
  the graph is exact; only WHICH features are chosen may differ from the exact store's choice,
  where a path runs through an edge outside some row's kept entries.

Shapes: B rows of a block, K kept entries per row, n_f active features, V visited rows.
"""

from __future__ import annotations

import torch

STREAM_ROW_ENTRIES = 2048
ENTRY_BYTES = 8  # a kept entry: its float32 value and its int32 column


def sketch_bytes(n_rows: int, n_features: int, entries: int | None = None) -> int:
    """Bytes the store takes for n_rows rows (entries, column, norm and share per row)."""
    k = min(entries or STREAM_ROW_ENTRIES, n_features)
    return n_rows * (k * ENTRY_BYTES + 16)


class StreamedRowStore:
    """Visited rows as sketches: per row its K largest normalised |edges| from features."""

    def __init__(self, n_features: int, device, entries: int | None = None):
        self.n_features = n_features
        self.entries = min(entries or STREAM_ROW_ENTRIES, n_features)
        self.device = device
        self._idx: list[torch.Tensor] = []  # [B] the rows' features
        self._cols: list[torch.Tensor] = []  # [B, K] int32
        self._vals: list[torch.Tensor] = []  # [B, K] |A[t, col]| / sum_s |A[t, s]|
        self._share: list[torch.Tensor] = []  # [B] sum over features of |A| / sum_s |A| (exact)
        self.n_rows = 0
        self.nbytes = 0

    def add(self, idx: torch.Tensor, rows_b_s: torch.Tensor) -> None:
        """Sketch the rows [B, n_sources] of features `idx` (one backward batch); the rows are not kept."""
        inv_norm = 1.0 / rows_b_s.abs().sum(1).clamp_min(1e-30)
        a = rows_b_s[:, :self.n_features].abs()
        vals, cols = a.topk(self.entries, dim=1) if self.entries else (a[:, :0], a[:, :0].long())
        self._idx.append(idx.clone())
        self._cols.append(cols.to(torch.int32))
        self._vals.append(vals * inv_norm[:, None])
        self._share.append(a.sum(1) * inv_norm)
        self.n_rows += len(idx)
        self.nbytes += sketch_bytes(len(idx), self.n_features, self.entries)

    @property
    def visited(self) -> torch.Tensor:
        """[V] the visited rows' features, in the order added."""
        if not self._idx:
            return torch.empty(0, dtype=torch.long, device=self.device)
        return torch.cat(self._idx)

    @property
    def feature_share(self) -> torch.Tensor:
        return torch.cat(self._share)

    def flow(self, coeff_r_v: torch.Tensor) -> torch.Tensor:
        """coeff @ A_hat[V, :n_f] [R, n_f] over the kept entries."""
        R = coeff_r_v.shape[0]
        out = torch.zeros(R, self.n_features, device=coeff_r_v.device)
        offset = 0
        for cols, vals in zip(self._cols, self._vals):
            B = cols.shape[0]
            contrib = coeff_r_v[:, offset:offset + B, None] * vals[None]  # [R, B, K]
            out.scatter_add_(1, cols.long().reshape(1, -1).expand(R, -1), contrib.reshape(R, -1))
            offset += B
        return out

    def square(self) -> torch.Tensor:
        """A_hat among the visited rows [V, V] over the kept entries."""
        v = self.visited
        where = torch.full((self.n_features,), -1, dtype=torch.long, device=v.device)
        where[v] = torch.arange(len(v), device=v.device)
        out = torch.zeros(len(v), len(v), device=v.device)
        offset = 0
        for cols, vals in zip(self._cols, self._vals):
            B = cols.shape[0]
            j = where[cols.long()]
            r, c = (j >= 0).nonzero(as_tuple=True)
            out[offset + r, j[r, c]] = vals[r, c]
            offset += B
        return out
