"""QK attributions (circuits.attention.qk) against the scores the model computed.

For heads, query and key positions of every supported architecture (GQA, rotary with Llama-3 and
Gemma-3 base/scaling variants, sliding windows, Qwen3/Gemma-3 QK-norms, Gemma-2's soft-capped scores,
GPT-2's learned positions and biases): the node pairs plus the named remainders equal the
pre-softmax score of the clean run (1e-4), and after Gemma-2's cap the model's hook_attn_scores.
Mutations (rotary left out, QK-norm left unfrozen/out, the wrong key position) break it.
"""

from __future__ import annotations

import pytest
import torch

from circuits.attention import qk as qk_module
from circuits.attention.qk import qk_attribution
from circuits.attribution.frozen_backward import FrozenBlocks
from circuits.attribution.rows import SourceLayout
from circuits.replacement.hooks import block_hook
from circuits.replacement.local import build_local_replacement
from tests.circuits.test_attribution import (MODELS, _model, _prompts, _transcoder, llama_model,  # noqa: F401
                                             ln_model, tiny_models)

POSITIONS = [(8, 3), (8, 8), (5, 0), (6, 5)]


def _setup(model_name, request, kind="clt", skip=True):
    model = _model(model_name, request)
    tc = _transcoder(model_name, model, kind, skip=skip, seed=3)
    rep = build_local_replacement(model, tc, _prompts(model, 1, 9, seed=5)[0])
    return model, tc, rep, FrozenBlocks(model), SourceLayout(rep, tc)


def _gap(model, tc, rep, blocks, layout, heads) -> float:
    """Worst |pairs + remainders - model's score| over `heads` [(layer, head, q, k)]."""
    all_cols = torch.arange(layout.n_sources)
    worst = 0.0
    for layer, head, q, k in heads:
        a = qk_attribution(model, tc, rep, blocks, layout, layer, head, q, k)
        total = float(a.pairs(all_cols, all_cols).sum()) + sum(a.remainders().values())
        worst = max(worst, abs(total - a.model_score) / max(1.0, abs(a.model_score)))
    return worst


def _heads(model):
    return [(l, h, q, k) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads) for q, k in POSITIONS]


@pytest.mark.parametrize("model_name", MODELS)
def test_pairs_and_remainders_sum_to_the_score(model_name, request):
    model, tc, rep, blocks, layout = _setup(model_name, request)
    assert _gap(model, tc, rep, blocks, layout, _heads(model)) <= 1e-4
    # the model's own scores, after any soft cap and before the mask
    layer = model.cfg.n_layers - 1
    name = block_hook(layer, "attn.hook_attn_scores")
    _, cache = model.run_with_cache(rep.tokens[None], names_filter=[name])
    cap = getattr(model.cfg, "attn_scores_soft_cap", -1.0) or -1.0
    for head in range(model.cfg.n_heads):
        a = qk_attribution(model, tc, rep, blocks, layout, layer, head, 8, 3)
        capped = cap * torch.tanh(torch.tensor(a.score() / cap)) if cap > 0 else torch.tensor(a.score())
        seen = float(cache[name][0, head, 8, 3])
        if seen == float("-inf"):  # outside a sliding window: masked after the score
            assert float(rep.patterns[layer][head, 8, 3]) == 0
            continue
        assert abs(float(capped) - seen) <= 1e-4
        # marginals account for the whole score as well
        total = float(a.q_marginals().sum()) + a.q_bias_marginal()
        assert abs(total - a.model_score) <= 1e-4 * max(1.0, abs(a.model_score))
        total = float(a.k_marginals().sum()) + a.k_bias_marginal()
        assert abs(total - a.model_score) <= 1e-4 * max(1.0, abs(a.model_score))


@pytest.mark.parametrize("model_name", ["llama3", "gemma3"])
def test_leaving_rotary_out_breaks_the_sum(model_name, request, monkeypatch):
    model, tc, rep, blocks, layout = _setup(model_name, request)
    heads = _heads(model)[:8]
    assert _gap(model, tc, rep, blocks, layout, heads) <= 1e-4
    monkeypatch.setattr(qk_module, "_rotary_matrix", lambda attn, pos, e, device: torch.eye(e, device=device))
    assert _gap(model, tc, rep, blocks, layout, heads) > 1e-3


@pytest.mark.parametrize("model_name", ["qwen3", "gemma3"])
def test_leaving_the_qk_norm_out_breaks_the_sum(model_name, request, monkeypatch):
    model, tc, rep, blocks, layout = _setup(model_name, request)
    heads = _heads(model)[:8]
    monkeypatch.setattr(qk_module, "_qk_norm_factor", lambda *args: 1.0)
    assert _gap(model, tc, rep, blocks, layout, heads) > 1e-3


def test_the_wrong_key_position_breaks_the_sum(request, monkeypatch):
    model, tc, rep, blocks, layout = _setup("qwen2", request)
    real = qk_module.side_seeds
    monkeypatch.setattr(qk_module, "side_seeds", lambda m, b, r, l, h, pos, side:
                        real(m, b, r, l, h, pos - 1 if side == "k" and pos > 0 else pos, side))
    assert _gap(model, tc, rep, blocks, layout, [(1, 0, 8, 3), (1, 1, 6, 5)]) > 1e-3


@pytest.mark.parametrize("model_name", ["llama3", "ln_model"])
def test_heads_explained_together_share_key_rows_and_match_one_by_one(model_name, request):
    """qk_attributions of several heads of a block (query heads sharing a key head, GQA, get the
    same key rows once) equal each head explained alone."""
    from circuits.attention.qk import _kv_head, qk_attributions

    model, tc, rep, blocks, layout = _setup(model_name, request)
    H = model.cfg.n_heads
    heads = [(h, 8, 3) for h in range(H)] + [(0, 6, 5)]
    assert len({_kv_head(model, h) for h, _, _ in heads}) < H or model_name == "ln_model"
    together = qk_attributions(model, tc, rep, blocks, layout, 1, heads)
    for (h, q, k), a in zip(heads, together):
        alone = qk_attribution(model, tc, rep, blocks, layout, 1, h, q, k)
        torch.testing.assert_close(a.q_nodes_e_n, alone.q_nodes_e_n, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(a.k_nodes_e_n, alone.k_nodes_e_n, atol=1e-6, rtol=1e-5)
        assert a.head == h and abs(a.score() - alone.score()) < 1e-5
    assert not torch.allclose(together[0].q_nodes_e_n, together[1].q_nodes_e_n)
