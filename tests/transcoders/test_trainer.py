"""The trainer: it learns, it resumes exactly, it keeps what is saved, it stops on bad data."""

from __future__ import annotations

import json

import pytest
import torch

from tests.transcoders.tiny import VOCAB, tiny_model, token_sequences, train_tiny, TinyLayers
from transcoders.activation_source import model_activations, pad_right
from transcoders.checkpoint import CHECKPOINT_FILE
from transcoders.errors import TranscoderError
from transcoders.loading import load_transcoder
from transcoders.metrics import fvu_per_layer
from transcoders.train_config import TrainConfig

SMALL = dict(n_features=64, tokens=24_000, batch_size=256, buffer_tokens=4096, seq_len=16,
             model_batch=32, log_every=10, lr=3e-3, lr_warmup_steps=5, checkpoint_seconds=0, threads=1)


@pytest.fixture(scope="module")
def seqs():
    return token_sequences(1500)


def _train(model, seqs, out, **kw):
    return train_tiny(model, seqs, out, SMALL, **kw)


def _heldout_fvu(model, tc):
    tokens, mask = pad_right(token_sequences(100, seed=99))
    x, y = model_activations(TinyLayers(model), tokens, mask, "ln2.hook_normalized", "hook_mlp_out")
    with torch.no_grad():
        return fvu_per_layer(y, tc(x)[0])


def test_training_learns_and_saved_metrics_match_reloaded_transcoder(model, seqs, tmp_path):
    res = _train(model, seqs, tmp_path / "a", log_path=tmp_path / "log.jsonl")
    lines = [json.loads(l) for l in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert lines[0]["fvu_mean"] > lines[-1]["fvu_mean"]  # it learned
    assert res.metrics["training"]["fvu_mean"] < 0.25
    loaded = load_transcoder(tmp_path / "a")
    heldout = _heldout_fvu(model, loaded)  # raw units: the normalisation was folded in correctly
    assert float(heldout.mean()) == pytest.approx(res.metrics["training"]["fvu_mean"], abs=0.08)
    assert not (tmp_path / "a" / CHECKPOINT_FILE).exists()
    record = json.loads((tmp_path / "a" / "training_config.json").read_text())
    assert record["train_config"]["transcoder"]["n_features"] == 64 and record["model_name"] == "tiny"


def test_resume_reproduces_uninterrupted_run(model, seqs, tmp_path):
    full = _train(model, seqs, tmp_path / "full", tokens=12_000)
    part = _train(model, seqs, tmp_path / "part", tokens=12_000, stop_at_step=20)
    assert part.transcoder is None and (tmp_path / "part" / CHECKPOINT_FILE).exists()
    assert not (tmp_path / "part" / "config.yaml").exists()
    done = _train(model, seqs, tmp_path / "part", tokens=12_000, resume=True)
    assert done.resumed_from_step == 20
    for (name, a), b in zip(full.transcoder.state_dict().items(), done.transcoder.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_existing_output_dir_is_refused_unless_overwrite_or_resume(model, seqs, tmp_path):
    out = tmp_path / "o"
    _train(model, seqs, out, tokens=2_000)
    before = (out / "W_enc_0.safetensors").read_bytes()
    with pytest.raises(TranscoderError, match="already exists"):
        _train(model, seqs, out, tokens=2_000)
    with pytest.raises(TranscoderError, match="already finished"):
        _train(model, seqs, out, tokens=2_000, resume=True)
    assert (out / "W_enc_0.safetensors").read_bytes() == before
    _train(model, seqs, out, tokens=2_000, seed=1, overwrite=True)
    assert (out / "W_enc_0.safetensors").read_bytes() != before
    with pytest.raises(TranscoderError, match="no checkpoint"):
        _train(model, seqs, tmp_path / "empty", resume=True)


def test_resume_with_other_settings_is_refused(model, seqs, tmp_path):
    _train(model, seqs, tmp_path / "r", stop_at_step=10)
    with pytest.raises(TranscoderError, match="n_features"):
        _train(model, seqs, tmp_path / "r", n_features=32, resume=True)


def test_nan_activations_stop_naming_layer_and_step_and_keep_checkpoint(seqs, tmp_path):
    model = tiny_model()
    out = tmp_path / "nan"
    _train(model, seqs, out, stop_at_step=10)
    ckpt = (out / CHECKPOINT_FILE).read_bytes()
    with torch.no_grad():
        model.blocks[1].mlp.b_out[3] = float("nan")
    with pytest.raises(TranscoderError, match=r"layer 1 \(blocks.1.hook_mlp_out\) at step 1[0-9]"):
        _train(model, seqs, out, resume=True)
    assert (out / CHECKPOINT_FILE).read_bytes() == ckpt
    assert not (out / "config.yaml").exists()


def test_empty_corpus_fails_before_writing(model, tmp_path):
    with pytest.raises(TranscoderError, match="no token sequences"):
        _train(model, [[1]] * 5, tmp_path / "e")
    assert not (tmp_path / "e").exists() or not any((tmp_path / "e").iterdir())


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="greater than 0"):
        TrainConfig.from_flat({"n_features": 0})
    with pytest.raises(ValueError, match="needs --topk"):
        TrainConfig.from_flat({"activation": "topk"})


def test_plt_topk_and_activation_cache(model, seqs, tmp_path):
    cache = tmp_path / "cache"
    res = _train(model, seqs, tmp_path / "t", kind="plt", activation="topk", topk=4, cache_dir=str(cache),
                 cache_dtype="float32", tokens=6_000)
    assert (cache / "meta.json").exists() and res.metrics["training"]["l0_total"] == pytest.approx(8, abs=0.01)
    import numpy as np

    x = np.load(cache / "x.npy", mmap_mode="r")
    tokens, mask = pad_right(seqs[:32])
    x_live, _ = model_activations(TinyLayers(model), tokens, mask, "ln2.hook_normalized", "hook_mlp_out")
    np.testing.assert_allclose(x[: x_live.shape[0]], x_live.numpy(), rtol=1e-6)  # corpus order, BOS left out
    assert x.shape[0] == 6_000 and VOCAB > 0


class _CountingModel:
    """A LayerReader that counts the tokens the trainer runs the model on."""

    def __init__(self, model):
        self.read_layers, self.tokens = TinyLayers(model), 0
        self.n_layers, self.d_model = model.cfg.n_layers, model.cfg.d_model

    def __call__(self, tokens_b_t, input_hook, output_hook):
        self.tokens += tokens_b_t.numel()
        return self.read_layers(tokens_b_t, input_hook, output_hook)


def test_activation_tokens_runs_the_model_once_and_cycles(model, seqs, tmp_path):
    counting = _CountingModel(model)
    res = _train(counting, seqs, tmp_path / "m", tokens=12_000, activation_tokens=3_000)
    assert res.metrics["training"]["tokens"] >= 11_000
    assert 3_000 <= counting.tokens <= 3_000 + 4_096 * 17 / 15  # one group of activations, BOS included
    again = _train(model, seqs, tmp_path / "m2", tokens=12_000, activation_tokens=3_000)
    torch.testing.assert_close(res.transcoder.W_enc, again.transcoder.W_enc)


def test_reviving_dead_features_lowers_the_dead_fraction_and_resumes_exactly(model, seqs, tmp_path):
    """A high initial threshold silences most features; the pre-activation loss on the silent ones
    (revive_after_tokens) brings them back, and the silence trackers it reads resume exactly."""
    harsh = dict(threshold_init=2.0, tokens=12_000, lr=1e-2, preact_coef=1e-2, dead_after_tokens=2048)
    plain = _train(model, seqs, tmp_path / "plain", **{**harsh, "preact_coef": 0.0})
    revived = _train(model, seqs, tmp_path / "revived", revive_after_tokens=512, **harsh)
    dead_plain = plain.metrics["training"]["dead_fraction_train"]
    dead_revived = revived.metrics["training"]["dead_fraction_train"]
    assert dead_plain > 0.5 and dead_revived < 0.2
    assert revived.metrics["training"]["fvu_mean"] < plain.metrics["training"]["fvu_mean"]
    part = _train(model, seqs, tmp_path / "part", revive_after_tokens=512, stop_at_step=20, **harsh)
    assert part.transcoder is None
    done = _train(model, seqs, tmp_path / "part", revive_after_tokens=512, resume=True, **harsh)
    for (name, a), b in zip(revived.transcoder.state_dict().items(), done.transcoder.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
