"""explain_head(): one head's QK attribution at one (query, key) of a prompt, without a graph."""

from __future__ import annotations

import torch

from circuits.attention.attach import summarize_qk
from circuits.attention.qk import qk_attribution
from circuits.attribution.frozen_backward import FrozenBlocks
from circuits.attribution.rows import SourceLayout
from circuits.attribution.to_graph import token_strings
from circuits.errors import CircuitsError
from circuits.replacement.local import build_local_replacement
from graphs.attention import HeadQK


@torch.no_grad()
def explain_head(rm, prompt: str, layer: int, head: int, query: int, key: int, top: int = 20) -> HeadQK:
    """Head `head` of block `layer` at query position `query`, key position `key` of `prompt`
    (positions count the BOS token if the model adds one): its pre-softmax score split into the
    top (query node, key node) pairs, marginals and remainder terms (circuits.attention.qk).
    `rm` is a ReplacementModel; labels come from its feature index when it has one."""
    model, transcoder = rm.model, rm.transcoder
    if not 0 <= layer < model.cfg.n_layers or not 0 <= head < model.cfg.n_heads:
        raise CircuitsError(f"no head {head} in layer {layer} (the model has {model.cfg.n_layers} layers of "
                            f"{model.cfg.n_heads} heads)")
    tokens = rm.tokens(prompt)
    rep = build_local_replacement(model, transcoder, tokens)
    layout = SourceLayout(rep, transcoder)
    a = qk_attribution(model, transcoder, rep, FrozenBlocks(model), layout, layer, head, query, key)
    labels: dict = {}
    if rm.index is not None:
        f = rep.features
        for marg in (a.q_marginals(), a.k_marginals()):
            for col in marg[:layout.n_features].abs().topk(min(4 * top, layout.n_features)).indices.tolist():
                pair = (int(f.layer[col]), int(f.feature[col]))
                labels.setdefault(pair, rm.index.label(*pair) or "")
    return summarize_qk(a, rep, layout, token_strings(model, rep.tokens), labels, top_pairs=top, top_marginals=top)
