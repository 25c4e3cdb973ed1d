"""Loss, metrics, normalisation folding, shuffle buffer and checkpoints, each against a hand computation."""

from __future__ import annotations

import pytest
import torch

from tests.transcoders.tiny import random_transcoder
from transcoders.activation_source import ShuffleBuffer
from transcoders.checkpoint import load_checkpoint, save_checkpoint
from transcoders.errors import TranscoderError
from transcoders.loss import TranscoderObjective
from transcoders.metrics import ReconstructionStats, fvu_per_layer
from transcoders.normalization import estimate_scales, fold_normalization


@pytest.mark.parametrize("kind,activation,skip,masked", [("clt", "jumprelu", True, False), ("clt", "jumprelu", False, True),
                                                        ("plt", "relu", False, True), ("clt", "topk", False, False)])
def test_loss_matches_method_formula_and_gradients_match_transcoder_forward(kind, activation, skip, masked):
    """The objective's layer-major fast path = the formula on Transcoder.forward, values and gradients;
    with a pre-activation mask, only the masked-in features carry the pre-activation term."""
    extra = {"topk": 2} if activation == "topk" else {}
    tc = random_transcoder(kind=kind, n_layers=3, d_model=8, n_features=6, activation=activation, skip=skip, **extra)
    x, y = torch.randn(10, 3, 8), torch.randn(10, 3, 8)
    with torch.no_grad():  # put some pre-activations inside the STE window
        if tc.threshold is not None:
            tc.threshold.copy_(tc.encode(x)[:4].mean(0) + 0.01)
    mask = (torch.arange(18).reshape(3, 6) % 3 == 0).float() if masked else None
    loss, parts, y_fast, a_fast = TranscoderObjective(tc, sparsity_c=2.0, preact_coef=0.5)(x, y, 0.1, mask)
    fast_grads = torch.autograd.grad(loss, list(tc.parameters()))
    y_hat, a, h = tc(x)
    torch.testing.assert_close(y_fast, y_hat.detach())
    torch.testing.assert_close(a_fast, a.detach().transpose(0, 1))
    # ||W_dec_i||: norm of feature i's decoders concatenated over its output layers
    norms = torch.stack([torch.cat([tc.decoder_to_layer(l, t) for t in range(l, 3)], dim=1).norm(dim=1)
                         for l in range(3)])
    recon = ((y_hat - y) ** 2).sum(dim=(1, 2)).mean()
    sparsity = torch.tanh(2.0 * norms * a).sum(dim=(1, 2)).mean()
    if activation == "topk":  # TopK's sparsity is its constraint: no penalty (issue 23)
        sparsity = torch.zeros(())
    theta = tc.threshold if tc.threshold is not None else torch.zeros(3, 6)
    m = mask if masked else torch.ones(3, 6)
    preact = ((theta - h).relu() * norms * m).sum(dim=(1, 2)).mean() if activation != "topk" else 0.0
    reference = recon + 0.1 * sparsity + 0.5 * preact
    torch.testing.assert_close(loss, reference)
    torch.testing.assert_close(parts["sparsity"], sparsity.detach())
    if activation != "topk":
        torch.testing.assert_close(parts["preact"], preact.detach())
    for g_fast, g_ref in zip(fast_grads, torch.autograd.grad(reference, list(tc.parameters()))):
        torch.testing.assert_close(g_fast, g_ref, rtol=1e-4, atol=1e-6)


def test_fvu_extremes_and_streaming_equals_batch():
    y = torch.randn(200, 2, 4) + 3.0
    assert fvu_per_layer(y, y).abs().max() < 1e-9
    torch.testing.assert_close(fvu_per_layer(y, y.mean(0, keepdim=True).expand_as(y)), torch.ones(2))
    y_hat = y + 0.3 * torch.randn_like(y)
    acts = (torch.rand(200, 2, 5) > 0.7).float()
    acts[:, :, 4] = 0  # a dead feature in every layer
    stats = ReconstructionStats(2, 5)
    for chunk in range(0, 200, 37):
        stats.update(y[chunk:chunk + 37], y_hat[chunk:chunk + 37], acts[chunk:chunk + 37])
    torch.testing.assert_close(stats.fvu_per_layer().float(), fvu_per_layer(y, y_hat), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats.l0_per_layer().float(), acts.sum(-1).mean(0))
    assert stats.dead_fraction() == pytest.approx(0.2)


@pytest.mark.parametrize("kind", ["clt", "plt"])
def test_fold_normalization_gives_the_same_outputs_on_raw_activations(kind):
    tc = random_transcoder(kind=kind, skip=True)
    x_raw = torch.randn(20, 3, 8) * torch.tensor([1.0, 5.0, 0.2])[None, :, None]
    s_in, s_out = estimate_scales(x_raw), torch.tensor([2.0, 0.5, 3.0])
    x_norm = x_raw * s_in[None, :, None]
    assert (x_norm.pow(2).sum(-1).mean(0) - 8).abs().max() < 1e-3  # E||x'||^2 = d
    y_norm, a_norm, _ = tc(x_norm)
    y_raw, a_raw, _ = fold_normalization(tc, s_in, s_out)(x_raw)
    torch.testing.assert_close(y_raw, y_norm / s_out[None, :, None], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a_raw, a_norm, rtol=1e-4, atol=1e-5)


class _CountingSource:
    """Groups of consecutive integers (x = y = token id) so batches can be traced back."""

    def __init__(self, group=100):
        self.group = group

    def start_position(self):
        return {"next": 0}

    def read_group(self, start):
        ids = torch.arange(start["next"], start["next"] + self.group, dtype=torch.float32)
        x = ids[:, None, None].expand(-1, 1, 2).clone()
        return x, x.clone(), {"next": start["next"] + self.group}


def test_shuffle_buffer_mixes_within_groups_and_resumes_exactly():
    buf = ShuffleBuffer(_CountingSource(), batch_size=20, seed=3)
    first = [buf.next_batch()[0][:, 0, 0] for _ in range(5)]
    seen = torch.cat(first).long()
    assert sorted(seen.tolist()) == list(range(100))  # one pass over the group, no repeats
    assert seen.tolist() != list(range(100))  # and shuffled
    state = buf.state_dict()
    after = [buf.next_batch()[0][:, 0, 0] for _ in range(3)]
    assert all((b >= 100).all() for b in after)  # next group
    again = ShuffleBuffer(_CountingSource(), batch_size=20, seed=3)
    again.load_state_dict(state)
    for a, b in zip(after, [again.next_batch()[0][:, 0, 0] for _ in range(3)]):
        torch.testing.assert_close(a, b)


def test_ranks_split_each_global_batch():
    whole = ShuffleBuffer(_CountingSource(), batch_size=20, seed=0).next_batch()[0][:, 0, 0]
    parts = [ShuffleBuffer(_CountingSource(), 20, 0, rank=r, world_size=2).next_batch()[0][:, 0, 0] for r in (0, 1)]
    torch.testing.assert_close(torch.cat(parts), whole)
    with pytest.raises(TranscoderError, match="divisible"):
        ShuffleBuffer(_CountingSource(), 21, 0, rank=0, world_size=2)


def test_checkpoint_round_trip_and_torn_file(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, {"a": torch.arange(5), "rng": torch.get_rng_state()}, {"step": 7, "buf": {"g": 1}})
    tensors, meta = load_checkpoint(path)
    assert meta["step"] == 7 and meta["buf"] == {"g": 1} and torch.equal(tensors["a"], torch.arange(5))
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary file was renamed away
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(TranscoderError, match="unreadable"):
        load_checkpoint(path)
