"""The attribution engine against independent computations through the real model's forward.

- the local replacement model reproduces the original logits (LayerNorm model and a Llama-style
  checkpoint with RMSNorm, rotary, gated MLP and grouped-query attention);
- every edge equals the effect of ablating its source in the frozen model (PLT, CLT, CLT + skip);
- speed tricks (causal-cone batches, batch size, influence-ordered feature choice) change no edge.
"""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuits.attribution.engine import attribute, dense_adjacency
from circuits.replacement import build_local_replacement, replacement_logits
from tests.circuits.attribution_checks import edge_errors, random_transcoder


@pytest.fixture(scope="module")
def ln_model():
    cfg = HookedTransformerConfig(n_layers=4, d_model=32, n_ctx=24, d_head=8, n_heads=4, d_vocab=60,
                                  act_fn="gelu", normalization_type="LN", seed=1)
    model = HookedTransformer(cfg)
    model.eval()
    return model


@pytest.fixture(scope="module")
def llama_model(tmp_path_factory):
    from circuits.models.pretrained import load_hf_checkpoint
    from tests.helpers.tiny_checkpoints import make_tiny_llama

    path = make_tiny_llama(tmp_path_factory.mktemp("llama"), n_layers=3)
    return load_hf_checkpoint(path, "cpu")


def _prompts(model, n: int, length: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(1, model.cfg.d_vocab, (length,), generator=gen) for _ in range(n)]


@pytest.mark.parametrize("model_name", ["ln_model", "llama_model"])
def test_replacement_model_reproduces_logits(model_name, request):
    model = request.getfixturevalue(model_name)
    tc = random_transcoder(model.cfg.n_layers, model.cfg.d_model, "clt", skip=True)
    for tokens in _prompts(model, 3, 9):
        rep = build_local_replacement(model, tc, tokens)
        assert len(rep.features) > 0
        original = model(tokens[None])[0]
        for freeze in (False, True):
            replaced = replacement_logits(model, tc, rep, freeze=freeze)
            assert (replaced - original).abs().max() <= 1e-4
        # the error terms matter: without them the transcoder alone does not reproduce the model
        assert rep.error_layer_pos_d[:, 1:].abs().max() > 1e-3


@pytest.mark.parametrize("model_name", ["ln_model", "llama_model"])
@pytest.mark.parametrize("kind,skip", [("plt", False), ("clt", False), ("clt", True)])
def test_edges_equal_ablation_effects(model_name, kind, skip, request):
    model = request.getfixturevalue(model_name)
    tc = random_transcoder(model.cfg.n_layers, model.cfg.d_model, kind, skip=skip, seed=3)
    for i, tokens in enumerate(_prompts(model, 2, 8, seed=5)):
        attr = attribute(model, tc, tokens, batch_size=16)
        worst, scale = edge_errors(model, tc, attr, n_per_kind=8, seed=i)
        assert scale > 0.1
        assert worst <= 5e-4 * max(1.0, scale), (worst, scale)


def test_a_wrong_edge_is_caught(ln_model):
    """The ablation check has teeth: a 1% error in one edge is detected."""
    tc = random_transcoder(4, 32, "clt", seed=4)
    attr = attribute(ln_model, tc, _prompts(ln_model, 1, 8)[0])
    node = int(attr.logit_rows[0, : len(attr.feature_idx)].abs().argmax())
    worst, scale = edge_errors(ln_model, tc, attr, n_per_kind=0, feature_nodes=[node])
    assert worst <= 5e-4 * max(1.0, scale)
    attr.logit_rows[0, node] *= 1.01
    worst, scale = edge_errors(ln_model, tc, attr, n_per_kind=0, feature_nodes=[node])
    assert worst > 5e-4 * max(1.0, scale)


def test_batching_does_not_change_edges(ln_model):
    tc = random_transcoder(4, 32, "clt", skip=True, seed=6)
    tokens = _prompts(ln_model, 1, 12, seed=9)[0]
    reference = dense_adjacency(attribute(ln_model, tc, tokens, batch_size=1))
    for batch_size in (5, 64, 4096):
        A = dense_adjacency(attribute(ln_model, tc, tokens, batch_size=batch_size))
        assert abs(A - reference).max() <= 1e-5 * max(1.0, abs(reference).max())


def test_max_feature_nodes_keeps_the_same_rows(ln_model):
    tc = random_transcoder(4, 32, "clt", seed=7)
    tokens = _prompts(ln_model, 1, 10, seed=2)[0]
    full = attribute(ln_model, tc, tokens)
    some = attribute(ln_model, tc, tokens, max_feature_nodes=20, batch_size=8)
    assert len(some.feature_idx) == 20 < len(full.feature_idx)
    assert torch.equal(some.feature_idx, some.feature_idx.sort().values)
    assert torch.allclose(some.feature_rows, full.feature_rows[some.feature_idx], atol=1e-5)
    # the chosen features are those with the most influence on the logits, not arbitrary ones:
    direct = some.logit_rows[:, : some.layout.n_features].abs().sum(0)
    assert direct[some.feature_idx].mean() > direct.mean()


def test_every_target_row_sums_with_its_bias_to_its_value(ln_model):
    """Invariant: a target's pre-activation = sum of incoming edges + terms no source changes.
    Scaling all sources by 0 leaves the bias part; so value - sum(edges) equals that part."""
    from circuits.replacement import dense_activations, frozen_forward
    from tests.circuits.attribution_checks import target_values

    tc = random_transcoder(4, 32, "clt", seed=8)
    tokens = _prompts(ln_model, 1, 9, seed=4)[0]
    attr = attribute(ln_model, tc, tokens)
    rep = attr.rep
    A = torch.tensor(dense_adjacency(attr))
    n_f, n_l = len(attr.feature_idx), len(attr.logits.token_ids)
    rows = torch.cat([torch.arange(n_f), torch.arange(A.shape[0] - n_l, A.shape[0])])
    values = target_values(attr, *frozen_forward(ln_model, tc, rep))
    zero_acts = torch.zeros_like(dense_activations(rep, tc))
    bias_only = target_values(attr, *frozen_forward(
        ln_model, tc, rep, acts_pos_layer_feat=zero_acts,
        error_layer_pos_d=torch.zeros_like(rep.error_layer_pos_d), embed_pos_d=torch.zeros_like(rep.embed_pos_d)))
    assert torch.allclose(values - bias_only, A[rows].sum(1), atol=5e-4)


def test_batches_shrink_for_long_prompts():
    from circuits.attribution.engine import GRADIENT_BUDGET_BYTES, bounded_batch_size

    assert bounded_batch_size(64, 16, 4, 128) == 64
    per_row = 4 * 1024 * 33 * 2048
    small = bounded_batch_size(512, 1024, 32, 2048)
    assert small * per_row <= GRADIENT_BUDGET_BYTES < (small + 1) * per_row
