"""Long prompts rebuild the frozen attention patterns from q and k instead of keeping them (issue
19): the same edges as the kept patterns (1e-6 relative) on every tiny architecture (GQA, rotary
with llama3 scaling, sliding windows, QK-norm, Gemma-2's attention soft cap and Gemma-3's local and
global layers), and a rebuild that drops the mask or the scale is caught."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from circuits.attribution import memory
from circuits.replacement import frozen_patterns
from circuits.replacement.frozen_patterns import FrozenPatterns
from tests.circuits.attribution_checks import attribute, dense_adjacency, random_transcoder
from tests.circuits.test_attribution import tiny_models  # noqa: F401 (fixture)

NAMES = ["gpt2", "llama3", "mistral", "qwen2", "qwen3", "gemma2", "gemma3"]


def _tokens(model, length: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, model.cfg.d_vocab, (length,), generator=gen)


def _kept_and_rebuilt(model, monkeypatch, kind="clt", skip=True, keep_layers: int = 0):
    tc = random_transcoder(model.cfg.n_layers, model.cfg.d_model, kind, skip=skip, seed=2)
    tokens = _tokens(model, 11, seed=7)
    kept = attribute(model, tc, tokens, batch_size=4, memory_gb=64)
    monkeypatch.setattr(frozen_patterns, "QUERY_BLOCK", 3)  # several query blocks, cut ones included
    per_layer = frozen_patterns.causal_pattern_bytes(1, model.cfg.n_heads, 11)
    # the plan keeps `keep_layers` layers' patterns whatever the budget, rebuilds the rest
    monkeypatch.setattr(memory, "PATTERN_KEEP_SHARE", (keep_layers * per_layer + 1) / (64 * 2 ** 30))
    rebuilt = attribute(model, tc, tokens, batch_size=4, memory_gb=64)
    return kept, rebuilt


def _relative_gap(kept, rebuilt) -> float:
    assert torch.equal(kept.feature_idx, rebuilt.feature_idx)
    a, b = dense_adjacency(kept), dense_adjacency(rebuilt)
    scale = float(np.abs(a).max())
    assert scale > 0
    return float(np.abs(a - b).max()) / scale


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("keep_layers", [0, 1])
def test_rebuilt_patterns_change_no_edge(tiny_models, name, keep_layers, monkeypatch):  # noqa: F811
    model = tiny_models(name)
    kept, rebuilt = _kept_and_rebuilt(model, monkeypatch, keep_layers=keep_layers)
    L = model.cfg.n_layers
    assert not kept.rep.patterns.rebuild and rebuilt.rep.patterns.rebuilt_layers == list(range(keep_layers, L))
    assert rebuilt.memory_plan["patterns_rebuilt_layers"] == L - keep_layers
    assert kept.memory_plan["patterns_rebuilt_layers"] == 0
    for l in range(model.cfg.n_layers):  # the rebuilt patterns are the model's
        assert torch.allclose(rebuilt.rep.patterns[l], kept.rep.patterns[l], atol=1e-6, rtol=0)
    assert _relative_gap(kept, rebuilt) <= 1e-6


def _no_mask(self, layer, q0, q1):
    attn = self._attn[layer]
    scores = attn.calculate_attention_scores(self._q[layer][None, q0:q1], self._k[layer][None, :q1])
    return torch.softmax(scores, dim=-1)[0].float()


def _twice_the_scale(self, layer, q0, q1):
    attn = self._attn[layer]
    scores = attn.calculate_attention_scores(self._q[layer][None, q0:q1], self._k[layer][None, :q1]) / 2
    return torch.softmax(attn.apply_causal_mask(scores, q0), dim=-1)[0].float()


@pytest.mark.parametrize(("name", "mutation"), [("mistral", _no_mask), ("gemma2", _twice_the_scale),
                                                 ("llama3", _twice_the_scale)])
def test_a_wrong_rebuild_is_caught(tiny_models, name, mutation, monkeypatch):  # noqa: F811
    model = tiny_models(name)
    monkeypatch.setattr(FrozenPatterns, "_rebuilt", mutation)
    kept, rebuilt = _kept_and_rebuilt(model, monkeypatch)
    assert rebuilt.rep.patterns.rebuild
    assert _relative_gap(kept, rebuilt) > 1e-3


def test_zeroed_layer_of_rebuilt_patterns_attends_nowhere(tiny_models):  # noqa: F811
    from circuits.replacement.local import build_local_replacement

    model = tiny_models("gemma3")
    tc = random_transcoder(model.cfg.n_layers, model.cfg.d_model, "plt", seed=1)
    rep = build_local_replacement(model, tc, _tokens(model, 9, seed=4), rebuild_from=0)
    cut = rep.patterns.with_layer_zeroed(1)
    assert not cut[1].any() and torch.equal(cut[0], rep.patterns[0]) and rep.patterns[1].any()
