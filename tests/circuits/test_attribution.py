"""The attribution engine against independent computations through the real model's forward.

- the local replacement model reproduces the original logits (LayerNorm model, a Llama-style
  checkpoint with RMSNorm, rotary, gated MLP and grouped-query attention, and tiny random checkpoints
  of every supported architecture: GPT-2, Llama-3 rope scaling, Mistral and Gemma sliding windows,
  Qwen2, Qwen3 q/k norms, Gemma-2/3 post-norms and soft caps; on Gemma-2/3 also with the
  transcoder writing at mlp.hook_out, before the post-MLP norm, as GemmaScope-2's do);
- every edge equals the effect of ablating its source in the frozen model (PLT, CLT, CLT + skip),
  for each of those models;
- speed tricks (causal-cone batches, batch size, influence-ordered feature choice) change no edge.
"""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from tests.circuits.attribution_checks import attribute, dense_adjacency
from circuits.replacement.local import build_local_replacement
from tests.helpers.oracles import replacement_logits
from tests.circuits.attribution_checks import edge_errors, random_transcoder
from tests.helpers import tiny_checkpoints as tiny

ARCHITECTURES = {"gpt2": tiny.make_tiny_gpt2, "llama3": tiny.make_tiny_llama3, "mistral": tiny.make_tiny_mistral,
                 "qwen2": tiny.make_tiny_qwen2, "qwen3": tiny.make_tiny_qwen3, "gemma2": tiny.make_tiny_gemma2,
                 "gemma3": tiny.make_tiny_gemma3, "gemma3-multimodal": tiny.make_tiny_gemma3_multimodal}
# the same tiny Gemma checkpoints, with the transcoder writing at circuit-tracer's mlp.hook_out (the MLP
# module's output, before the post-MLP norm) instead of hook_mlp_out (after it)
HOOK_OUT = {"gemma2@mlp.hook_out": "gemma2", "gemma3@mlp.hook_out": "gemma3"}
MODELS = ["ln_model", "llama_model", *ARCHITECTURES, *HOOK_OUT]


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


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict:
    """Tiny random checkpoints (2 layers, d=64) of each architecture, loaded on first use."""
    from circuits.models.pretrained import load_hf_checkpoint

    loaded: dict = {}

    def get(name: str):
        if name not in loaded:
            path = ARCHITECTURES[name](tmp_path_factory.mktemp(name))
            loaded[name] = load_hf_checkpoint(path, "cpu")
        return loaded[name]

    return get


def _model(name: str, request):
    name = HOOK_OUT.get(name, name)
    if name in ARCHITECTURES:
        return request.getfixturevalue("tiny_models")(name)
    return request.getfixturevalue(name)


def _transcoder(model_name: str, model, kind: str, **settings):
    """A random transcoder for `model`; for the HOOK_OUT variants it writes at mlp.hook_out."""
    from circuits.replacement.hooks import adapt_hooks

    tc = random_transcoder(model.cfg.n_layers, model.cfg.d_model, kind, **settings)
    if model_name in HOOK_OUT:
        tc.cfg.output_hook = "mlp.hook_out"
        adapt_hooks(model, tc, "the fixture transcoder")
        assert tc.cfg.output_hook == "mlp.hook_out"
    return tc


def _prompts(model, n: int, length: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(1, model.cfg.d_vocab, (length,), generator=gen) for _ in range(n)]


@pytest.mark.parametrize("model_name", MODELS)
def test_replacement_model_reproduces_logits(model_name, request):
    model = _model(model_name, request)
    tc = _transcoder(model_name, model, "clt", skip=True)
    for tokens in _prompts(model, 3, 9):
        rep = build_local_replacement(model, tc, tokens)
        assert len(rep.features) > 0
        original = model(tokens[None])[0]
        for freeze in (False, True):
            replaced = replacement_logits(model, tc, rep, freeze=freeze)
            assert (replaced - original).abs().max() <= 1e-4
        # the error terms matter: without them the transcoder alone does not reproduce the model
        assert rep.error_layer_pos_d[:, 1:].abs().max() > 1e-3


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("kind,skip", [("plt", False), ("clt", False), ("clt", True)])
def test_edges_equal_ablation_effects(model_name, kind, skip, request):
    model = _model(model_name, request)
    tc = _transcoder(model_name, model, kind, skip=skip, seed=3)
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


@pytest.mark.parametrize("model_name", ["ln_model", "gemma2", "gemma3@mlp.hook_out"])
def test_every_target_row_sums_with_its_bias_to_its_value(model_name, request):
    """Invariant: a target's pre-activation = sum of incoming edges + terms no source changes.
    Scaling all sources by 0 leaves the bias part; so value - sum(edges) equals that part.
    (Gemma-2: logit nodes read the logits before the final soft cap, linear in the sources.)"""
    from tests.helpers.oracles import dense_activations, frozen_forward
    from tests.circuits.attribution_checks import target_values

    ln_model = _model(model_name, request)
    tc = _transcoder(model_name, ln_model, "clt", seed=8)
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


def test_soft_capped_logit_nodes_read_the_logits_before_the_cap(request):
    """Gemma-2 caps its logits (here at 5): probabilities are the model's, a logit node's value is
    its demeaned logit before the cap, and that is what the logit rows sum to (test above)."""
    model = _model("gemma2", request)
    tc = random_transcoder(model.cfg.n_layers, model.cfg.d_model, "plt", seed=2)
    tokens = _prompts(model, 1, 9, seed=1)[0]
    attr = attribute(model, tc, tokens)
    with torch.no_grad():
        capped = model(tokens[None])[0, -1]
    cap = model.cfg.output_logits_soft_cap
    uncapped = cap * torch.atanh(capped / cap)
    ids = attr.logits.token_ids
    torch.testing.assert_close(attr.logits.probabilities, capped.softmax(-1)[ids], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(attr.logits.values, uncapped[ids] - uncapped.mean(), atol=2e-3, rtol=1e-4)
    assert (attr.rep.node_logits_vocab - attr.rep.logits_vocab).abs().max() > 0.1  # the cap matters


def test_thread_count_does_not_change_the_edges(ln_model):
    """attribute() picks its thread count from the free cores; the edges must not depend on it."""
    tc = random_transcoder(4, 32, "clt", seed=6)
    tokens = _prompts(ln_model, 1, 8, seed=2)[0]
    one = attribute(ln_model, tc, tokens, threads=1)
    two = attribute(ln_model, tc, tokens, threads=2)
    assert one.threads == [1] and two.threads == [2]
    torch.testing.assert_close(one.feature_rows, two.feature_rows, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(one.logit_rows, two.logit_rows, rtol=1e-5, atol=1e-6)
