"""Influence-ordered feature choice: w^T (A_hat + A_hat^2 + ...) from the rows known so far
(METHOD.md section 3; circuit-tracer chooses its features the same way).

A_hat is |A| with each target row scaled to sum 1 over all its sources. Only visited features have
rows, so a path continues only through visited features: with f_0 = the logit flow on the visited
features and M = A_hat among them (the visited block, [V, V]),

    influence = logit_flow + (f_0 + f_1 + ... + f_{J-1}) @ A_hat[V, :n_f],   f_{j+1} = f_j @ M,

where hop j's flow on every active feature is f_{j-1} @ A_hat[V, :n_f] and the walk stops after
the first hop whose flow is below STOP_FLOW everywhere (or after max_depth hops). The hops run on
the small visited block; the rows on all active features are read once per round, not once per
hop. Whether a hop's flow is below STOP_FLOW everywhere is decided from the visited block and the
rows' cached feature shares (an upper bound of the hop's total flow); only when those two do not
decide it is the hop's flow on every feature computed.
"""

from __future__ import annotations

import torch

from circuits.attribution.row_store import RowStore

STOP_FLOW = 1e-12
LOGIT_CHUNK_ROWS = 1024


def logit_flow(weights_n: torch.Tensor, logit_rows_n_s: torch.Tensor, n_features: int) -> torch.Tensor:
    """w @ A_hat[logits, :n_f] [n_f]: the logit targets' weights spread over their direct sources."""
    out = torch.zeros(n_features, dtype=logit_rows_n_s.dtype, device=logit_rows_n_s.device)
    for start in range(0, logit_rows_n_s.shape[0], LOGIT_CHUNK_ROWS):
        a = logit_rows_n_s[start:start + LOGIT_CHUNK_ROWS].abs()
        scale = weights_n[start:start + LOGIT_CHUNK_ROWS] / a.sum(1).clamp_min(1e-30)
        out += scale @ a[:, :n_features]
    return out


def feature_influence(logit_flow_f: torch.Tensor, store: RowStore, max_depth: int) -> torch.Tensor:
    """Influence on every active feature [n_f] from the logit flow and the visited rows in `store`."""
    influence = logit_flow_f.clone()
    if store.n_rows == 0 or max_depth <= 0:
        return influence
    M_v_v = store.square()
    share_v = store.feature_share
    f_v = logit_flow_f[store.visited]
    total_v = torch.zeros_like(f_v)
    for _ in range(max_depth):
        total_v += f_v
        next_v = f_v @ M_v_v
        if float((f_v.abs() * share_v).sum()) < STOP_FLOW:  # the hop's flow sums below STOP_FLOW
            break
        if float(next_v.abs().max()) < STOP_FLOW and float(store.flow(f_v[None]).abs().max()) < STOP_FLOW:
            break
        f_v = next_v
    return influence + store.flow(total_v[None])[0]


def next_round(influence_f: torch.Tensor, visited: torch.Tensor, n_done: int, n_chosen: int,
               batch_size: int, divisor: int) -> torch.Tensor:
    """The features to visit next, most influential first: a `divisor`-th of the rows known (at
    least one batch), up to the cap. Influence is re-estimated after every such round: its cost
    grows with the rows known, so per-batch updates made long prompts quadratic."""
    influence_f[visited] = -1.0
    k = min(max(batch_size, n_done // divisor), n_chosen - n_done)
    return influence_f.topk(k).indices
