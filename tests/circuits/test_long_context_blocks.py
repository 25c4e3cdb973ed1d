"""Long-prompt layouts change no edge (issue 19): attention patterns kept as causal query blocks,
the attention backward over those blocks with grouped-query value heads contracted once, and the
activation-scaled decoders read in blocks instead of kept. Small block sizes force every path on
tiny models; every edge still equals its ablation effect and the all-in-one-block graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from circuits.replacement import frozen_patterns
from circuits.attribution import memory, rows
from circuits.replacement.local import build_local_replacement
from tests.circuits.attribution_checks import attribute, dense_adjacency, edge_errors, random_transcoder
from tests.circuits.test_attribution import ARCHITECTURES, tiny_models  # noqa: F401 (fixture)


def _tokens(model, length: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, model.cfg.d_vocab, (length,), generator=gen)


@pytest.fixture
def small_blocks(monkeypatch):
    """Query blocks of 3 positions, decoder blocks of 5 features, decoders never cached."""
    monkeypatch.setattr(frozen_patterns, "QUERY_BLOCK", 3)
    monkeypatch.setattr(rows, "DECODER_BLOCK_FEATURES", 5)
    monkeypatch.setattr(memory, "DECODER_CACHE_SHARE", 0.0)


@pytest.mark.parametrize("name", ["llama3", "gemma3", "gpt2"])
def test_small_blocks_change_no_edge(tiny_models, name, monkeypatch):  # noqa: F811
    model = tiny_models(name)
    tc = random_transcoder(model.cfg.n_layers, model.cfg.d_model, "clt", skip=True, seed=2)
    tokens = _tokens(model, 11, seed=7)
    whole = dense_adjacency(attribute(model, tc, tokens, batch_size=4, memory_gb=64))
    monkeypatch.setattr(frozen_patterns, "QUERY_BLOCK", 3)
    monkeypatch.setattr(rows, "DECODER_BLOCK_FEATURES", 5)
    monkeypatch.setattr(memory, "DECODER_CACHE_SHARE", 0.0)
    attr = attribute(model, tc, tokens, batch_size=4, memory_gb=64)
    assert not attr.layout._cache  # the decoders were read in blocks
    assert len(list(attr.rep.patterns.blocks(0, 11))) == 4
    blocked = dense_adjacency(attr)
    assert np.abs(blocked - whole).max() <= 1e-6 * np.abs(whole).max()
    worst, scale = edge_errors(model, tc, attr, n_per_kind=8, seed=1)
    assert scale > 0.1
    assert worst <= 5e-4 * max(1.0, scale), (worst, scale)


def test_grouped_query_heads_are_contracted_once(tiny_models):  # noqa: F811
    """The tiny Llama has 4 query heads on 2 value heads: the backward holds 2 value projections."""
    from circuits.attribution.frozen_backward import FrozenBlocks

    model = tiny_models("llama3")
    blocks = FrozenBlocks(model)
    assert blocks.W_V_kv_d_e[0].shape[0] == 2 < model.cfg.n_heads == 4


def test_causal_blocks_hold_the_models_patterns(tiny_models, small_blocks):  # noqa: F811
    model = tiny_models("gemma3")  # sliding-window and global layers
    tc = random_transcoder(model.cfg.n_layers, model.cfg.d_model, "plt", seed=1)
    tokens = _tokens(model, 10, seed=4)
    rep = build_local_replacement(model, tc, tokens)
    _, cache = model.run_with_cache(tokens[None], names_filter=lambda n: n.endswith("hook_pattern"))
    for l in range(model.cfg.n_layers):
        assert torch.equal(rep.patterns[l], cache[f"blocks.{l}.attn.hook_pattern"][0])
    assert rep.patterns.nbytes == frozen_patterns.causal_pattern_bytes(model.cfg.n_layers, model.cfg.n_heads, 10)
    assert rep.patterns.nbytes < 0.75 * model.cfg.n_layers * model.cfg.n_heads * 10 * 10 * 4
