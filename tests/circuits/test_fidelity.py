"""Fidelity of the replacement model, checked against cases with a known answer."""

from __future__ import annotations

import pytest
import torch

from circuits.errors import CircuitsError
from circuits.replacement.local import replacement_hooks
from circuits.training.fidelity import REPORT_KEYS, measure_fidelity, plot_fidelity
from circuits.replacement.hooks import check_transcoder_fits
from tests.transcoders.tiny import exact_transcoder, random_transcoder, tiny_model, token_sequences


@pytest.fixture(scope="module")
def relu_model():
    return tiny_model(n_layers=3, act_fn="relu")


@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_exact_transcoder_gives_a_perfect_replacement(relu_model, kind):
    tc = exact_transcoder(relu_model, kind=kind)
    rep = measure_fidelity(relu_model, tc, token_sequences(40, length=12), max_tokens=2000)
    assert set(REPORT_KEYS) <= set(rep)
    assert rep["fvu_mean"] < 1e-8 and rep["kl_mean"] < 1e-6 and rep["top1_agreement"] == 1.0
    assert rep["ce_replacement"] == pytest.approx(rep["ce_original"], abs=1e-5)
    # L0 = the MLP's positive hidden units per token
    hidden = []
    tokens = torch.tensor(token_sequences(40, length=12))
    relu_model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{l}.mlp.hook_post", lambda a, hook: hidden.append(a))
                                                 for l in range(3)])
    expected = [float((h[:, 1:] > 0).float().sum(-1).mean()) for h in hidden]
    assert rep["l0_per_layer"] == pytest.approx(expected, abs=1e-2)


def test_all_mlps_replaced_at_once_with_cross_layer_writes(relu_model):
    """In the replacement run every layer's MLP output equals the CLT applied to that run's own inputs
    (so layer-l features reach every later layer), and position 0 keeps the true output."""
    tc = exact_transcoder(relu_model, kind="clt")
    with torch.no_grad():
        tc.W_dec[0][:, 1:].normal_(0, 0.05)  # layer-0 features also write to layers 1 and 2
    tokens = torch.tensor(token_sequences(4, length=10))
    seen = {}
    save = lambda a, hook: seen.__setitem__(hook.name, a.clone())  # noqa: E731
    names = [f"blocks.{l}.{h}" for l in range(3) for h in ("ln2.hook_normalized", "hook_mlp_out")]
    _, cache = relu_model.run_with_cache(tokens)
    with relu_model.hooks(fwd_hooks=replacement_hooks(relu_model, tc)):
        relu_model.run_with_hooks(tokens, fwd_hooks=[(n, save) for n in names])
    x = torch.stack([seen[f"blocks.{l}.ln2.hook_normalized"] for l in range(3)], dim=2)
    y = torch.stack([seen[f"blocks.{l}.hook_mlp_out"] for l in range(3)], dim=2)
    y_hat = tc(x)[0]
    torch.testing.assert_close(y[:, 1:], y_hat[:, 1:], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y[:, 0, 0], cache["blocks.0.hook_mlp_out"][:, 0])
    assert (y[:, 1:, 2] - cache["blocks.2.hook_mlp_out"][:, 1:]).abs().max() > 1e-3  # it did change the run


def test_a_poor_transcoder_scores_poorly(relu_model):
    tc = exact_transcoder(relu_model, kind="plt")
    with torch.no_grad():
        for W in tc.W_dec:
            W.mul_(-1.0)
    rep = measure_fidelity(relu_model, tc, token_sequences(40, length=12), max_tokens=2000)
    assert rep["fvu_mean"] > 1.0 and rep["kl_mean"] > 1e-2 and rep["top1_agreement"] < 0.9


def test_plot_is_written(tmp_path):
    rep = {"fvu_per_layer": [0.1, 0.2], "fvu_mean": 0.15, "l0_per_layer": [5.0, 7.0], "l0_total": 12.0,
           "top1_agreement": 0.9, "kl_mean": 0.1}
    out = plot_fidelity(rep, tmp_path / "f.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mismatched_transcoder_is_refused(relu_model):
    with pytest.raises(CircuitsError, match="has 2 layers but the model has 3"):
        check_transcoder_fits(relu_model, random_transcoder(n_layers=2, d_model=32))
    with pytest.raises(CircuitsError, match="d_model=8 but the model has 32"):
        check_transcoder_fits(relu_model, random_transcoder(n_layers=3, d_model=8))
    with pytest.raises(CircuitsError, match="input hook 'hook_nowhere' does not exist"):
        check_transcoder_fits(relu_model, random_transcoder(n_layers=3, d_model=32, input_hook="hook_nowhere"))
