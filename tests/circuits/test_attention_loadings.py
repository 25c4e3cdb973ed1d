"""Head loadings (circuits.attention.loadings) against the engine's edges.

- the per-head frozen backward sums to FrozenBlocks.attention_backward;
- every edge's loadings plus its same-position remainder equal the edge (1e-5 of its row's
  largest edge), for PLT, CLT and CLT + skip on every supported architecture (the tiny checkpoints
  of tests/circuits/test_attribution.py: GQA, rotary, sliding windows, QK-norm, Gemma post-norms and
  soft caps, Gemma with the transcoder writing before the post-MLP norm);
- cross-position edges have no remainder, same-position edges no loadings, and no loading sits
  above the target's layer;
- the check has teeth: dropping one head, or using another prompt's patterns, breaks it.
"""

from __future__ import annotations

import copy

import pytest
import torch

from circuits.attention.heads import attention_backward_per_head
from tests.circuits.attribution_checks import attribute
from circuits.attribution.frozen_backward import FrozenBlocks
from circuits.replacement.local import build_local_replacement
from tests.circuits.attention_checks import all_edge_loadings, loading_gap
from tests.circuits.attribution_checks import random_transcoder
from tests.circuits.test_attribution import (MODELS, _model, _prompts, _transcoder, llama_model,  # noqa: F401
                                             ln_model, tiny_models)

TOLERANCE = 1e-5


@pytest.mark.parametrize("model_name", ["ln_model", "gemma2", "llama3"])
def test_per_head_backward_sums_to_the_attention_backward(model_name, request):
    model = _model(model_name, request)
    tc = random_transcoder(model.cfg.n_layers, model.cfg.d_model, "clt", seed=1)
    rep = build_local_replacement(model, tc, _prompts(model, 1, 7)[0])
    blocks = FrozenBlocks(model)
    grad = torch.randn(3, rep.n_pos, model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    for l in range(model.cfg.n_layers):
        post = None if rep.ln1_post_scale_layer_pos is None else rep.ln1_post_scale_layer_pos[l]
        whole = blocks.attention_backward(l, grad, rep.patterns.blocks(l, rep.n_pos), rep.ln1_scale_layer_pos[l], post)
        per_head = attention_backward_per_head(blocks, l, grad, rep.patterns[l], rep.ln1_scale_layer_pos[l], post)
        assert per_head.shape[1] == model.cfg.n_heads
        torch.testing.assert_close(per_head.sum(1), whole, atol=1e-5, rtol=1e-5)
        assert per_head[:, 0].abs().max() > 1e-3 * whole.abs().max()  # heads differ: not all in one


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("kind,skip", [("plt", False), ("clt", False), ("clt", True)])
def test_loadings_sum_to_the_edge(model_name, kind, skip, request):
    model = _model(model_name, request)
    tc = _transcoder(model_name, model, kind, skip=skip, seed=3)
    tokens = _prompts(model, 1, 8, seed=5)[0]
    attr = attribute(model, tc, tokens, batch_size=16)
    loads, rows, t, s = all_edge_loadings(model, tc, attr)
    assert loading_gap(loads, rows, t, s) <= TOLERANCE
    # cross-position edges are carried by heads alone; same-position ones keep a remainder
    n_f = len(attr.feature_idx)
    target_pos = torch.cat([attr.rep.features.position[attr.feature_idx],
                            torch.full((len(attr.logits.token_ids),), attr.rep.n_pos - 1)])
    target_layer = torch.cat([attr.rep.features.layer[attr.feature_idx],
                              torch.full((len(attr.logits.token_ids),), model.cfg.n_layers)])
    src_pos = torch.cat([attr.rep.features.position,
                         torch.arange(1, attr.rep.n_pos).repeat(model.cfg.n_layers), torch.arange(attr.rep.n_pos)])
    cross = target_pos[t] != src_pos[s]
    assert cross.sum() > 10 and (~cross).sum() > 10
    assert torch.all(loads.remainder_e[cross] == 0)
    assert loads.loadings_e_l_h[cross].abs().sum((1, 2)).min() > 0
    assert loads.remainder_e[~cross].abs().max() > 0
    assert torch.all(loads.loadings_e_l_h[~cross] == 0)  # no path leaves a position and comes back
    # no head above the target's own layer carries anything (a feature reads resid_mid of its block)
    above = torch.arange(model.cfg.n_layers)[None, :] > target_layer[t][:, None]
    assert torch.all(loads.loadings_e_l_h.abs().sum(-1)[above] == 0)
    assert n_f > 0


def test_dropping_a_head_or_using_wrong_patterns_breaks_the_sum(ln_model):
    """The mutations the exactness test must catch."""
    tc = random_transcoder(4, 32, "clt", skip=True, seed=3)
    tokens = _prompts(ln_model, 1, 8, seed=5)[0]
    attr = attribute(ln_model, tc, tokens, batch_size=16)
    loads, rows, t, s = all_edge_loadings(ln_model, tc, attr)
    assert loading_gap(loads, rows, t, s) <= TOLERANCE
    dropped = FrozenBlocks(ln_model)
    dropped.W_O_head_e_d = [w.clone() for w in dropped.W_O_head_e_d]
    dropped.W_O_head_e_d[1][2] = 0  # head 2 of block 1 left out
    assert loading_gap(*all_edge_loadings(ln_model, tc, attr, blocks=dropped)) > 1e-3
    other = build_local_replacement(ln_model, tc, _prompts(ln_model, 1, 8, seed=6)[0])
    wrong = copy.copy(attr.rep)
    wrong.patterns = other.patterns
    assert loading_gap(*all_edge_loadings(ln_model, tc, attr, rep=wrong)) > 1e-3


@pytest.mark.parametrize("model_name", ["ln_model", "llama3"])
def test_source_chunks_starting_late_give_the_same_loadings(model_name, request, monkeypatch):
    """Sources propagated in small position-sorted chunks, each over the positions from its first
    source's on (and, with QUERY_BLOCK 3, patterns read from many causal blocks), give the loadings
    of one chunk over every position; the chunked ones still sum to the edges."""
    from circuits.attention import loadings as loadings_module
    from circuits.replacement import frozen_patterns

    model = _model(model_name, request)
    tc = _transcoder(model_name, model, "clt", skip=True, seed=3)
    tokens = _prompts(model, 1, 8, seed=5)[0]
    monkeypatch.setattr(frozen_patterns, "QUERY_BLOCK", 3)
    attr = attribute(model, tc, tokens, batch_size=16)
    monkeypatch.setattr(loadings_module, "SOURCE_CHUNK", 1 << 30)
    whole, rows, t, s = all_edge_loadings(model, tc, attr)
    monkeypatch.setattr(loadings_module, "SOURCE_CHUNK", 5)
    chunked = all_edge_loadings(model, tc, attr)[0]
    torch.testing.assert_close(chunked.loadings_e_l_h, whole.loadings_e_l_h, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(chunked.remainder_e, whole.remainder_e, atol=1e-6, rtol=1e-5)
    assert loading_gap(chunked, rows, t, s) <= TOLERANCE
    for l in range(model.cfg.n_layers):
        for start in (0, 2, 5):
            window = loadings_module.pattern_window(attr.rep, l, start, attr.rep.n_pos)
            assert torch.equal(window, attr.rep.patterns[l][:, start:, start:])


@pytest.mark.parametrize("n_pos", [5, 16, 40])
def test_mixing_in_query_blocks_equals_the_whole_causal_product(n_pos):
    """mix_positions reads, for each block of queries, the keys up to the block's last query only:
    on a causal pattern that is the whole product, for windows of one block and of several (with
    grouped-query value heads)."""
    from circuits.attention.heads import mix_positions

    g = torch.Generator().manual_seed(n_pos)
    S, G, r, e = 3, 2, 3, 4
    pattern = torch.rand(G * r, n_pos, n_pos, generator=g).tril()
    values = torch.randn(S, n_pos, G, e, generator=g)
    whole = torch.einsum("grqk,skge->sqgre", pattern.view(G, r, n_pos, n_pos), values).reshape(S, n_pos, G * r, e)
    torch.testing.assert_close(mix_positions(pattern, values), whole, rtol=1e-6, atol=1e-6)
