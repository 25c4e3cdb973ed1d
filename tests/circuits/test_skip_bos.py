"""Skip transcoders at BOS (issue 22): as in circuit-tracer, BOS carries no features and its error is a
constant, but its skip term x W_skip stays live. The rule is pinned on the local replacement model
(both of its forward implementations), and every edge, the BOS token's included, equals an ablation
in the frozen model for PLT and CLT skip transcoders at both hook pairs circuit-tracer uses:
`ln2.hook_normalized` -> `hook_mlp_out`, and GemmaScope-2's `mlp.hook_in` -> `mlp.hook_out` on a
tiny Gemma-2 checkpoint (ln2 weight folded into W_enc and W_skip, the post-MLP norm frozen).

Mutation tried: putting back the old rule (BOS's whole MLP output constant: `g_x[:, 0] = 0` in
rows.py) makes every test of the ablation variant fail on the BOS token's edges.
"""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuits.replacement.hooks import block_hook, load_fitting_transcoder
from circuits.replacement.local import build_local_replacement, replacement_hooks
from tests.circuits.attribution_checks import attribute, dense_adjacency, edge_errors, random_transcoder
from tests.helpers.oracles import frozen_forward
from tests.helpers.published_transcoders import write_layout

TOL = 5e-4


@pytest.fixture(scope="module")
def ln_model():
    cfg = HookedTransformerConfig(n_layers=3, d_model=32, n_ctx=24, d_head=8, n_heads=4, d_vocab=60,
                                  act_fn="gelu", normalization_type="LN", seed=2)
    return HookedTransformer(cfg).eval()


@pytest.fixture(scope="module")
def gemma2(tmp_path_factory):
    from circuits.models.pretrained import load_hf_checkpoint
    from tests.helpers.tiny_checkpoints import make_tiny_gemma2

    return load_hf_checkpoint(make_tiny_gemma2(tmp_path_factory.mktemp("gemma2")), "cpu")


def _tokens(model, n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, model.cfg.d_vocab, (n,), generator=torch.Generator().manual_seed(seed))


def _skip_transcoder(model, kind: str, seed: int):
    tc = random_transcoder(model.cfg.n_layers, model.cfg.d_model, kind, skip=True, seed=seed)
    with torch.no_grad():
        tc.W_skip.normal_(0, 0.2)  # a skip path strong enough that BOS's share of it shows
        tc.b_dec.normal_(0, 0.1)
    return tc


def _gemmascope2_skip(model, kind: str, folder, seed: int):
    """A skip transcoder in GemmaScope-2's layout (mlp.hook_in -> mlp.hook_out), loaded as a user would."""
    ref = _skip_transcoder(model, kind, seed)
    layout = "gemmascope2-clt" if kind == "clt" else "gemmascope2-plt"
    tc = load_fitting_transcoder(model, write_layout(layout, ref, folder))
    assert (tc.cfg.input_hook, tc.cfg.output_hook, tc.cfg.skip) == ("ln2.hook_normalized", "mlp.hook_out", True)
    return tc


@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_bos_keeps_its_skip_term_live(ln_model, kind):
    """Move BOS's embedding: BOS's MLP output moves by exactly (x_live - x_clean) W_skip in the frozen
    forward (the edge oracle) and in the local replacement model; its features stay zero."""
    model, tc = ln_model, _skip_transcoder(ln_model, kind, seed=1)
    rep = build_local_replacement(model, tc, _tokens(model))
    emb = rep.embed_pos_d.clone()
    emb[0] += torch.randn(emb.shape[1], generator=torch.Generator().manual_seed(0))
    L = model.cfg.n_layers
    seen = {}

    def keep(name):
        def hook(value, hook):  # noqa: ARG001
            seen[name] = value[0, 0].detach().clone()
        return hook

    names = [block_hook(l, n) for l in range(L) for n in ("ln2.hook_normalized", "hook_resid_mid", "hook_resid_post")]
    set_bos = ("hook_embed", lambda value, hook: torch.cat([emb[None, :1].to(value.dtype), value[:, 1:]], 1))
    runs = {"frozen_forward": lambda: frozen_forward(model, tc, rep, embed_pos_d=emb),
            "replacement_hooks": lambda: model.run_with_hooks(
                rep.tokens[None], fwd_hooks=[set_bos, *replacement_hooks(model, tc, rep), *[(n, keep(n)) for n in names]])}
    for name, run in runs.items():
        seen.clear()
        with model.hooks(fwd_hooks=[(n, keep(n)) for n in names] if name == "frozen_forward" else []):
            run()
        moved = 0.0
        for l in range(L):
            x_live = seen[block_hook(l, "ln2.hook_normalized")]
            y_bos = seen[block_hook(l, "hook_resid_post")] - seen[block_hook(l, "hook_resid_mid")]
            skip_change = (x_live - rep.mlp_in_layer_pos_d[l, 0]) @ tc.W_skip[l]
            torch.testing.assert_close(y_bos, rep.mlp_out_layer_pos_d[l, 0] + skip_change, rtol=1e-4, atol=1e-5)
            moved = max(moved, float(skip_change.abs().max()))
        assert moved > 1e-2, (name, moved)  # the old rule (BOS output constant) would be off by this much


def _check_exact(model, tc, seeds=(0, 1)):
    for seed in seeds:
        attr = attribute(model, tc, _tokens(model, seed=seed), batch_size=16)
        worst, scale = edge_errors(model, tc, attr, n_per_kind=6, seed=seed)
        assert scale > 0.01 and worst <= TOL * max(1.0, scale), (worst, scale)
        # the BOS token's edges are where the rule shows: they must be large enough to be checked
        A = dense_adjacency(attr)  # columns: chosen features, error nodes, token embeddings, ...
        L, P = attr.rep.error_layer_pos_d.shape[0], attr.rep.n_pos
        bos = len(attr.feature_idx) + L * (P - 1)
        assert abs(A[:, bos]).max() > 10 * TOL * max(1.0, scale), abs(A[:, bos]).max()


@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_skip_edges_equal_ablation_at_ln2_normalized_to_mlp_out(ln_model, kind):
    tc = _skip_transcoder(ln_model, kind, seed=3)
    assert (tc.cfg.input_hook, tc.cfg.output_hook) == ("ln2.hook_normalized", "hook_mlp_out")
    _check_exact(ln_model, tc)


@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_skip_edges_equal_ablation_at_mlp_hook_in_to_hook_out_on_gemma2(gemma2, kind, tmp_path):
    _check_exact(gemma2, _gemmascope2_skip(gemma2, kind, tmp_path / kind, seed=4))
