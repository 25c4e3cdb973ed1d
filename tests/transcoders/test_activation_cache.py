"""The activation cache: one model pass, reused. Training from it sees the live stream's batches
(bfloat16-rounded), and a second run over the same cache never calls the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from circuits.training.train import ModelLayers
from tests.transcoders.tiny import token_sequences, train_tiny
from transcoders.activation_cache import CachedActivationSource, build_activation_cache, read_cache_meta
from transcoders.activation_source import ModelActivationSource, ShuffleBuffer

# 15 tokens per sequence (16, BOS left out); a group of 3840 = 256 sequences, so the live source's
# groups (whole sequences) and the cache's groups (fixed row counts) hold the same rows
BASE = dict(kind="plt", n_features=32, tokens=7_680, batch_size=256, buffer_tokens=3_840, seq_len=16,
            model_batch=32, log_every=10, lr=3e-3, lr_warmup_steps=5, checkpoint_seconds=0, threads=1, eval_tokens=0)


class _CountingLayers:
    def __init__(self, model):
        self.inner, self.calls = ModelLayers(model), 0
        self.n_layers, self.d_model = model.cfg.n_layers, model.cfg.d_model

    def __call__(self, tokens_b_t, input_hook, output_hook):
        self.calls += 1
        return self.inner(tokens_b_t, input_hook, output_hook)


@pytest.fixture(scope="module")
def seqs():
    return token_sequences(600)


def _batches(source, n: int):
    buf = ShuffleBuffer(source, 256, seed=0)
    return [buf.next_batch() for _ in range(n)]


def test_cached_batches_are_the_live_batches_in_bfloat16(model, seqs, tmp_path):
    live = ModelActivationSource(ModelLayers(model), seqs, "ln2.hook_normalized", "hook_mlp_out", 16, 32, 3_840)
    build_activation_cache(live, 7_680, tmp_path / "c", "tiny", seq_len=16)
    assert read_cache_meta(tmp_path / "c")["dtype"] == "bfloat16"
    assert np.load(tmp_path / "c" / "x.npy", mmap_mode="r").dtype == np.int16  # 2 bytes a value on disk
    fresh = ModelActivationSource(ModelLayers(model), seqs, "ln2.hook_normalized", "hook_mlp_out", 16, 32, 3_840)
    want, got = _batches(fresh, 30), _batches(CachedActivationSource(tmp_path / "c", 3_840), 30)
    for (x_live, y_live), (x_c, y_c) in zip(want, got):  # 30 batches: both groups, same order
        torch.testing.assert_close(x_c, x_live.bfloat16().float(), rtol=0, atol=0)
        torch.testing.assert_close(y_c, y_live, rtol=8e-3, atol=1e-6)


def test_training_from_the_cache_matches_the_stream_and_skips_the_model(model, seqs, tmp_path):
    streamed = train_tiny(model, seqs, tmp_path / "live", BASE)
    counting = _CountingLayers(model)
    first = train_tiny(counting, seqs, tmp_path / "a", BASE, cache_dir=str(tmp_path / "cache"))
    calls_first = counting.calls
    second = train_tiny(counting, seqs, tmp_path / "b", BASE, cache_dir=str(tmp_path / "cache"), lr=5e-3)
    assert calls_first > 0 and counting.calls == calls_first  # the second run read only the cache
    f32 = train_tiny(model, seqs, tmp_path / "f32", BASE, cache_dir=str(tmp_path / "c32"), cache_dtype="float32")
    for name, p in streamed.transcoder.state_dict().items():  # float32 cache: the very same batches
        torch.testing.assert_close(f32.transcoder.state_dict()[name], p, msg=name)
    fvu_live = streamed.metrics["training"]["fvu_mean"]
    assert abs(first.metrics["training"]["fvu_mean"] - fvu_live) < 0.02 * fvu_live + 1e-3  # bf16 inputs
    gap = (first.transcoder.W_enc - streamed.transcoder.W_enc).norm() / streamed.transcoder.W_enc.norm()
    assert gap < 0.02  # a few JumpReLU gates flip on rounded inputs; the weights stay within 2%
    assert second.metrics["training"]["tokens"] == BASE["tokens"]


def test_rows_kept_in_memory_are_the_live_rows_in_order(model, seqs):
    live = ModelActivationSource(ModelLayers(model), seqs, "ln2.hook_normalized", "hook_mlp_out", 16, 32, 3_840)
    kept = CachedActivationSource.in_memory(live, 5_000, 3_840)  # 5,000 rows: the second group is cut
    assert kept.n == 5_000
    fresh = ModelActivationSource(ModelLayers(model), seqs, "ln2.hook_normalized", "hook_mlp_out", 16, 32, 3_840)
    x1, y1, nxt = fresh.read_group(fresh.start_position())
    x2, y2, _ = fresh.read_group(nxt)
    x_live, y_live = torch.cat([x1, x2])[:5_000], torch.cat([y1, y2])[:5_000]
    x_kept, y_kept, _ = kept.read_group({"row": 0})  # 3,840 rows from row 0 ...
    x_rest, y_rest, _ = kept.read_group({"row": 3_840})  # ... and the rest, wrapping round to row 0
    torch.testing.assert_close(torch.cat([x_kept, x_rest])[:5_000], x_live, rtol=2e-3, atol=1e-5)
    torch.testing.assert_close(torch.cat([y_kept, y_rest])[:5_000], y_live, rtol=2e-3, atol=1e-5)
    torch.testing.assert_close(x_rest[1_160:], x_kept[:2_680], rtol=0, atol=0)  # past row 5,000: row 0 again
