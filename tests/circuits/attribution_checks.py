"""Shared checks for the attribution tests: the edge-equals-ablation check, written once.

Everything here goes through the real model's forward pass with hooks (circuits.replacement.local.
frozen_forward), which is independent of the hand-written backward sweep it checks.
"""

from __future__ import annotations

import numpy as np
import torch

from circuits.attribution.config import TraceConfig
from circuits.attribution.engine import attribution_rows
from circuits.attribution.rows import Attribution
from circuits.attribution.to_graph import graph_edges
from tests.helpers.oracles import dense_activations, frozen_forward
from transcoders.config import TranscoderConfig
from transcoders.transcoder import Transcoder


def attribute(model, transcoder, tokens_pos: torch.Tensor, threads: int | None = None, **settings) -> Attribution:
    """The engine's rows stage (attribution_rows) with TraceConfig fields as keywords, and no
    memory budget unless one is given: the rows every edge-exactness test checks."""
    settings.setdefault("memory_gb", None)
    return attribution_rows(model, transcoder, tokens_pos, TraceConfig(**settings), threads=threads)


def dense_adjacency(attr: Attribution) -> np.ndarray:
    """The all-nodes square over graph nodes (chosen features, errors, embeddings, logits),
    float32 [n_nodes, n_nodes]: graph_edges placed in the rows of the features and logits."""
    edges = graph_edges(attr)
    n_f, n_l = len(attr.feature_idx), attr.logit_rows.shape[0]
    n_sources = edges.shape[1]
    square = np.zeros((n_sources + n_l, n_sources + n_l), dtype=np.float32)
    square[:n_f, :n_sources] = edges[:n_f]
    square[n_sources:, :n_sources] = edges[n_f:]
    return square


def random_transcoder(n_layers: int, d_model: int, kind: str, n_features: int = 48, skip: bool = False,
                      seed: int = 0, threshold: float = 0.3) -> Transcoder:
    """A transcoder whose features fire often enough to give dense graphs."""
    torch.manual_seed(seed)
    tc = Transcoder(TranscoderConfig(kind=kind, n_layers=n_layers, d_model=d_model, n_features=n_features, skip=skip))
    with torch.no_grad():
        tc.W_enc.normal_(0, 1.0 / d_model**0.25)
        tc.threshold.fill_(threshold)
        if skip:
            tc.W_skip.normal_(0, 0.05)
    for p in tc.parameters():
        p.requires_grad_(False)
    return tc


def target_values(attr: Attribution, pre_layer_pos_feat: torch.Tensor, logits_pos_vocab: torch.Tensor) -> torch.Tensor:
    """Every target's value in graph row order: chosen features' pre-activations, then logit targets
    (demeaned logits, or the custom direction read after the final norm)."""
    f = attr.rep.features
    idx = attr.feature_idx
    feats = pre_layer_pos_feat[f.layer[idx], f.position[idx], f.feature[idx]]
    last = logits_pos_vocab[-1]
    logit_vals = torch.stack([last[t] - last.mean() for t in attr.logits.token_ids])
    return torch.cat([feats, logit_vals])


def edge_errors(model, transcoder, attr: Attribution, n_per_kind: int = 12, seed: int = 0,
                feature_nodes: list[int] | None = None) -> tuple[float, float]:
    """Ablate random sources (or the given feature nodes) one at a time in the frozen model;
    return (max |change - column|, max |A|) over all feature and logit targets."""
    rep = attr.rep
    A = torch.tensor(dense_adjacency(attr))
    n_f = len(attr.feature_idx)
    n_l = len(attr.logits.token_ids)
    rows = torch.cat([torch.arange(n_f), torch.arange(A.shape[0] - n_l, A.shape[0])])
    pre, logits = frozen_forward(model, transcoder, rep)
    base = target_values(attr, pre, logits)
    acts = dense_activations(rep, transcoder)
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    f = rep.features
    L, P = rep.error_layer_pos_d.shape[0], rep.n_pos
    if feature_nodes is None:
        feature_nodes = torch.randperm(n_f, generator=gen)[:n_per_kind].tolist()
    for node in feature_nodes:
        s = int(attr.feature_idx[node])
        a2 = acts.clone()
        a2[f.position[s], f.layer[s], f.feature[s]] = 0
        worst = max(worst, _gap(model, transcoder, attr, base, A[rows, node], acts_pos_layer_feat=a2))
    n_err = L * (P - 1)
    for e in torch.randperm(n_err, generator=gen)[:n_per_kind].tolist():
        layer, pos = divmod(e, P - 1)
        err = rep.error_layer_pos_d.clone()
        err[layer, pos + 1] = 0
        worst = max(worst, _gap(model, transcoder, attr, base, A[rows, n_f + e], error_layer_pos_d=err))
    for pos in range(P):
        emb = rep.embed_pos_d.clone()
        emb[pos] = 0
        worst = max(worst, _gap(model, transcoder, attr, base, A[rows, n_f + n_err + pos], embed_pos_d=emb))
    return worst, float(A.abs().max())


def _gap(model, transcoder, attr, base, column, **override) -> float:
    pre, logits = frozen_forward(model, transcoder, attr.rep, **override)
    change = base - target_values(attr, pre, logits)
    return float((change - column).abs().max())
