"""The trainer's options from issue 23, each checked by what it promises: BatchTopK keeps exactly
k * batch activations per layer and is saved as the JumpReLU it acts as; AuxK's gradient reaches the
dead features and only them; the FVU loss weights every layer equally; the data-based starts and
the unit-norm decoder hold after training steps."""

from __future__ import annotations

import pytest
import torch

from tests.transcoders.tiny import random_transcoder, token_sequences, train_tiny
from transcoders.loss import TranscoderObjective, auxk_loss, batch_topk, encode_layer_major
from transcoders.train_config import TrainConfig

BASE = dict(kind="plt", n_features=32, tokens=6_144, batch_size=256, buffer_tokens=3_072, seq_len=16,
            model_batch=32, log_every=4, lr=3e-3, lr_warmup_steps=0, checkpoint_seconds=0, threads=1, eval_tokens=0,
            sparsity_coef=0.0, preact_coef=0.0)


@pytest.fixture(scope="module")
def seqs():
    return token_sequences(600)


def test_batch_topk_keeps_exactly_k_times_batch_per_layer():
    pre = torch.randn(3, 50, 40)
    acts = batch_topk(pre, 4)
    assert ((acts != 0).sum(dim=(1, 2)) == 4 * 50).all()
    per_token = (acts != 0).sum(-1)
    assert per_token.min() < 4 < per_token.max()  # the budget moves between tokens: not per-token TopK
    for l in range(3):  # the kept ones are the layer's largest pre-activations, unchanged
        kept = acts[l][acts[l] != 0]
        assert kept.min() >= pre[l][acts[l] == 0].max()
        torch.testing.assert_close(acts[l][acts[l] != 0], pre[l][acts[l] != 0])


def test_auxk_gradient_reaches_dead_features_only():
    tc = random_transcoder(kind="plt", n_layers=2, d_model=8, n_features=6, activation="relu")
    x, y = torch.randn(20, 2, 8), torch.randn(20, 2, 8)
    dead = torch.zeros(2, 6)
    dead[0, [1, 4]] = 1
    dead[1, 2] = 1
    pre = encode_layer_major(tc, x.transpose(0, 1).contiguous())
    var = (y - y.mean(0)).pow(2).sum(dim=(0, 2))
    loss = auxk_loss(tc, pre, y, var, dead, k_aux=2)
    loss.backward()
    g_enc = tc.W_enc.grad.abs().sum(-1)  # [L, F]
    assert (g_enc[dead == 0] == 0).all() and (g_enc[dead == 1] > 0).all()
    g_dec = torch.stack([W.grad.abs().sum(dim=(1, 2)) for W in tc.W_dec])
    assert (g_dec[dead == 0] == 0).all() and (g_dec[dead == 1] > 0).all()
    assert float(auxk_loss(tc, pre.detach(), y, var, torch.zeros(2, 6), k_aux=2).detach()) == 0.0  # no dead: no term


def test_fvu_loss_weights_layers_equally():
    tc = random_transcoder(kind="plt", n_layers=2, d_model=8, n_features=6, activation="topk", topk=2)
    x, y = torch.randn(30, 2, 8), torch.randn(30, 2, 8)
    y[:, 1] *= 10  # a loud layer: the summed error is dominated by it, the FVU loss is not
    loss_fvu, _, y_hat, _ = TranscoderObjective(tc, 1.0, 0.0, recon_loss="fvu")(x, y, 0.0)
    err = (y_hat - y).pow(2).sum(dim=(0, 2))
    var = (y - y.mean(0)).pow(2).sum(dim=(0, 2))
    torch.testing.assert_close(loss_fvu, 8 * (err / var).sum())
    loss_sum, _, _, _ = TranscoderObjective(tc, 1.0, 0.0)(x, y, 0.0)
    torch.testing.assert_close(loss_sum, err.sum() / 30)


def test_batchtopk_training_saves_a_jumprelu_at_its_learnt_threshold(model, seqs, tmp_path):
    res = train_tiny(model, seqs, tmp_path / "b", BASE, activation="batchtopk", topk=4)
    tc = res.transcoder
    assert tc.cfg.activation == "jumprelu" and tc.threshold is not None and float(tc.threshold.detach().min()) > 0
    assert res.metrics["training"]["l0_total"] == pytest.approx(2 * 4, abs=0.01)  # exact while training
    from circuits.training.train import ModelLayers
    from transcoders.activation_source import model_activations, pad_right

    tokens, mask = pad_right(token_sequences(60, seed=5))
    x, _ = model_activations(ModelLayers(model), tokens, mask, "ln2.hook_normalized", "hook_mlp_out")
    with torch.no_grad():
        l0 = (tc(x)[1] != 0).float().sum(-1).mean(0)
    assert ((l0 > 3) & (l0 < 6.5)).all()  # the threshold gives about k per token outside training (0: ~16)


def test_batchtopk_threshold_is_the_running_mean_of_the_smallest_kept_activation():
    from transcoders.train_state import update_batchtopk_threshold

    tc = random_transcoder(kind="plt", n_layers=2, d_model=8, n_features=6, activation="batchtopk", topk=2)
    acts = torch.zeros(2, 5, 6)
    acts[0, 0, 1], acts[0, 3, 2], acts[1, 4, 5] = 0.7, 0.3, 1.5
    update_batchtopk_threshold(tc, acts, step=0)
    torch.testing.assert_close(tc.threshold[:, 0], torch.tensor([0.3, 1.5]))
    acts[0, 3, 2] = 0.9
    update_batchtopk_threshold(tc, acts, step=1, decay=0.75)
    torch.testing.assert_close(tc.threshold[:, 0], torch.tensor([0.75 * 0.3 + 0.25 * 0.7, 1.5]))


def test_data_starts_and_unit_norm_decoders(model, seqs, tmp_path):
    from transcoders.activation_source import ModelActivationSource, ShuffleBuffer
    from transcoders.train_state import init_from_data
    from circuits.training.train import ModelLayers

    cfg = TrainConfig.from_flat({**BASE, "activation": "topk", "topk": 4, "decoder_init": "zero",
                                 "encoder_bias_init": "centred"})
    tc = random_transcoder(kind="plt", n_layers=2, d_model=32, n_features=32, activation="topk", topk=4)
    src = ModelActivationSource(ModelLayers(model), seqs, "ln2.hook_normalized", "hook_mlp_out", 16, 32, 3_072)
    x, _ = ShuffleBuffer(src, 256, 0).current_group()
    init_from_data(tc, cfg, x.mean(0))
    assert all(float(W.detach().abs().max()) == 0 for W in tc.W_dec)
    pre = encode_layer_major(tc, x.transpose(0, 1).contiguous())
    assert float(pre.mean(1).abs().max()) < 1e-4  # every feature starts centred on the data
    res = train_tiny(model, seqs, tmp_path / "u", BASE, activation="topk", topk=4, decoder_unit_norm=True,
                     decoder_init="encoder")
    norms = torch.stack([W.pow(2).sum(dim=(1, 2)).sqrt() for W in res.transcoder.W_dec])
    assert norms.std() > 0  # the saved decoders carry the output scale folded in, one per layer
    assert (norms.std(dim=1) / norms.mean(dim=1)).max() < 1e-4  # but within a layer every feature's is the same
    with pytest.raises(ValueError, match="decoder-unit-norm"):
        TrainConfig.from_flat({"decoder_unit_norm": True})


def test_least_squares_skip_start_recovers_an_affine_map():
    from transcoders.train_state import fit_skip

    tc = random_transcoder(kind="plt", n_layers=2, d_model=8, n_features=6, activation="relu", skip=True)
    x = torch.randn(400, 2, 8)
    W_true, b_true = torch.randn(2, 8, 8), torch.randn(2, 8)
    y = torch.einsum("nld,lde->nle", x, W_true) + b_true
    fit_skip(tc, x, y, ridge=1e-9)
    torch.testing.assert_close(tc.W_skip.detach(), W_true, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(tc.b_dec.detach(), b_true, atol=1e-4, rtol=1e-4)
    fit_skip(tc, x, y, ridge=10.0)  # the ridge shrinks the map towards 0
    assert float(tc.W_skip.detach().norm()) < 0.5 * float(W_true.norm())


def test_skip_start_and_its_learning_rate(model, seqs, tmp_path):
    from transcoders.activation_source import ModelActivationSource, ShuffleBuffer
    from transcoders.distributed import DistInfo
    from transcoders.train_state import TrainState
    from circuits.training.train import ModelLayers

    src = ModelActivationSource(ModelLayers(model), seqs, "ln2.hook_normalized", "hook_mlp_out", 16, 32, 3_072)
    buffer = ShuffleBuffer(src, 256, 0)
    x0, y0 = buffer.current_group()
    skip = dict(BASE, activation="topk", topk=4, skip=True, skip_init="lstsq", decoder_init="zero")
    moved = {}
    for scale in (0.0, 0.1, 1.0):
        state = TrainState(TrainConfig.from_flat({**skip, "skip_lr_scale": scale}), 2, 32, "cpu", DistInfo(), "t", "t")
        state.init_fresh(x0, y0)
        start = state.tc.W_skip.detach().clone()
        xs, ys = x0 * state.s_in[None, :, None], y0 * state.s_out[None, :, None]
        y_lin = torch.einsum("nld,lde->nle", xs, start) + state.tc.b_dec.detach()
        fvu = ((ys - y_lin).pow(2).sum((0, 2)) / (ys - ys.mean(0)).pow(2).sum((0, 2)))
        assert (fvu < 0.95).all()  # the start already explains part of every layer's output
        enc = state.tc.W_enc.detach().clone()
        for _ in range(3):
            state.train_step(*buffer.next_batch(), lr=1e-2, lam=0.0)
        assert not torch.equal(state.tc.W_enc.detach(), enc)
        moved[scale] = float((state.tc.W_skip.detach() - start).abs().max())
    assert moved[0.0] == 0.0 and 0 < moved[0.1] < 0.3 * moved[1.0]  # Adam steps scale with the rate
    with pytest.raises(ValueError, match="need a skip term"):
        TrainConfig.from_flat({"skip_init": "lstsq"})


def test_encoder_rows_start_at_centred_inputs():
    from transcoders.train_state import init_from_data

    cfg = TrainConfig.from_flat({**BASE, "activation": "topk", "topk": 4, "encoder_init": "data",
                                 "encoder_bias_init": "centred"})
    tc = random_transcoder(kind="plt", n_layers=2, d_model=8, n_features=6, activation="topk", topk=4)
    norms = tc.W_enc.detach().norm(dim=-1).clone()
    x = torch.randn(50, 2, 8) + 3.0  # inputs far from the origin: their directions all alike
    x_mean = x.mean(0)
    init_from_data(tc, cfg, x_mean, x)
    W = tc.W_enc.detach()
    torch.testing.assert_close(W.norm(dim=-1), norms)  # the random start's scale is kept
    centred = (x - x_mean).transpose(0, 1)  # [L, N, d]
    cos = torch.einsum("lfd,lnd->lfn", W / W.norm(dim=-1, keepdim=True),
                       centred / centred.norm(dim=-1, keepdim=True))
    best = cos.max(-1).values
    torch.testing.assert_close(best, torch.ones_like(best))  # every row is one centred input's direction
    assert (cos.argmax(-1)[0].unique().numel() == 6)  # and each feature a different one
