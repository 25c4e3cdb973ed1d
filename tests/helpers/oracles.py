"""Test oracles of the local replacement model: the real model's own forward pass with hooks, which
is independent of the hand-written frozen backward the engine uses. The edge-exactness tests
compare every edge with `frozen_forward`; the engine itself never runs these."""

from __future__ import annotations

import torch

from circuits.replacement.hooks import transcoder_hooks
from circuits.replacement.local import LocalReplacement, freeze_hooks, logits_before_soft_cap, replacement_hooks


@torch.no_grad()
def replacement_logits(model, transcoder, rep: LocalReplacement, freeze: bool = True) -> torch.Tensor:
    """Logits [P, vocab] of the local replacement model on its own prompt (equal to the original's).
    A test oracle (tests/circuits/test_attribution.py): the engine itself never runs it."""
    hooks = replacement_hooks(model, transcoder, rep, freeze)
    return model.run_with_hooks(rep.tokens[None], fwd_hooks=hooks)[0]


@torch.no_grad()
def frozen_forward(model, transcoder, rep: LocalReplacement, acts_pos_layer_feat: torch.Tensor | None = None,
                   error_layer_pos_d: torch.Tensor | None = None, embed_pos_d: torch.Tensor | None = None):
    """Run the real model with everything frozen: attention patterns, norm scales, feature
    activations (given, or the clean ones), error terms and embeddings (given, or clean).

    Returns (feature pre-activations [L, P, F] read at each layer's input hook, logits [P, vocab]
    before any final soft-capping: what logit nodes read). This is the linear model whose direct
    effects the adjacency holds: scaling one source here changes every target exactly by that
    source's column of A. A test oracle: the edge-exactness tests compare every edge with it.
    """
    L, P = model.cfg.n_layers, rep.n_pos
    if acts_pos_layer_feat is None:
        acts_pos_layer_feat = dense_activations(rep, transcoder)
    errors = rep.error_layer_pos_d if error_layer_pos_d is None else error_layer_pos_d
    embed = rep.embed_pos_d if embed_pos_d is None else embed_pos_d
    inputs: dict[int, torch.Tensor] = {}
    pre_acts = [None] * L

    def set_embed(value, hook):
        return embed[None].to(value.dtype)

    def read_input(layer):
        def hook(value, hook):
            inputs[layer] = value[0]
            pre_acts[layer] = transcoder.encode_layer(value[0].to(transcoder.W_enc.dtype), layer)
        return hook

    def write_output(layer):
        def hook(value, hook):
            x_all = torch.zeros(P, L, transcoder.cfg.d_model, dtype=transcoder.W_enc.dtype, device=value.device)
            for l, x in inputs.items():
                x_all[:, l] = x
            y = transcoder.decode(acts_pos_layer_feat, x_all)[:, layer] + errors[layer]
            y[0] = rep.mlp_out_layer_pos_d[layer, 0]
            return y[None].to(value.dtype)
        return hook

    hooks = [("hook_embed", set_embed)]
    for l in range(L):
        inp, out = transcoder_hooks(transcoder, l)
        hooks += [(inp, read_input(l)), (out, write_output(l))]
    hooks += freeze_hooks(model, rep)
    with logits_before_soft_cap(model):
        logits = model.run_with_hooks(rep.tokens[None], fwd_hooks=hooks)[0]
    return torch.stack(pre_acts), logits


def dense_activations(rep: LocalReplacement, transcoder) -> torch.Tensor:
    """The clean feature activations as a dense tensor [P, L, F]."""
    f = rep.features
    acts = torch.zeros(rep.n_pos, transcoder.cfg.n_layers, transcoder.cfg.n_features,
                       dtype=transcoder.W_enc.dtype, device=rep.embed_pos_d.device)
    acts[f.position, f.layer, f.feature] = f.activation.to(acts.dtype)
    return acts
