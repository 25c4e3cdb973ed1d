"""Built-in models' default transcoders: `transcoders train --model M` without --out trains the
default of that --kind into the folder `trace` reads (resuming an unfinished run there), and the
training defaults bound memory (shape-derived shuffle buffer)."""

from __future__ import annotations

from pathlib import Path

import pytest

from circuits.cli.transcoders import resolve_config
from circuits.models.registry import (GEMMA3_CLT, GEMMA3_PLT, SMOLLM2_CLT, SMOLLM2_PLT, WORLD_CLT,
                                      default_transcoder_fields)
from tests.circuits.test_transcoders_cli import FAST, run
from transcoders.loading import load_transcoder
from transcoders.train_config import BUFFER_BYTES, MAX_BUFFER_TOKENS, TrainConfig


def test_kind_picks_the_named_default():
    assert default_transcoder_fields("smollm2-135m") is SMOLLM2_PLT
    assert default_transcoder_fields("smollm2-135m", "clt") is SMOLLM2_CLT
    assert default_transcoder_fields("gemma3-270m") is GEMMA3_PLT
    assert default_transcoder_fields("gemma3-270m", "clt") is GEMMA3_CLT
    assert default_transcoder_fields("my/local-model") is None
    clt = resolve_config("smollm2-135m", Path("unused"), False, {"kind": "clt"})
    assert clt.flat() == SMOLLM2_CLT.flat()
    assert resolve_config("smollm2-135m", Path("unused"), False, {}).flat() == SMOLLM2_PLT.flat()
    # no named PLT for world: its CLT's settings with the kind changed (as benchmarks/clt_vs_plt.py does)
    world_plt = resolve_config("world", Path("unused"), False, {"kind": "plt"})
    assert world_plt.flat() == {**WORLD_CLT.flat(), "kind": "plt"}


def test_shuffle_buffer_is_derived_from_the_shape():
    cfg = TrainConfig(batch_size=512)
    smol = cfg.group_tokens(30, 576)                   # SmolLM2-135M
    assert smol % 512 == 0 and 0 < 2 * 4 * 30 * 576 * smol <= BUFFER_BYTES
    assert 2 * 4 * 30 * 576 * (smol + 512) > BUFFER_BYTES  # the largest multiple that fits
    assert cfg.group_tokens(4, 128) == MAX_BUFFER_TOKENS  # a tiny model: capped
    assert cfg.group_tokens(200, 8192) == 512           # a huge one: never below one batch
    assert TrainConfig(batch_size=256, buffer_tokens=1024).group_tokens(30, 576) == 1024
    with pytest.raises(ValueError, match="buffer_tokens"):
        TrainConfig(batch_size=512, buffer_tokens=256)


def test_train_without_out_writes_the_default_folder(world_tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("circuits.training.defaults.transcoders_dir", lambda: tmp_path)
    code, _, err = run(["transcoders", "train", "--model", "world-tiny", "--eval-tokens", "0", *FAST], capsys)
    assert code == 0, err
    folder = tmp_path / "world-tiny" / "default-clt"
    assert load_transcoder(folder).n_features == 32
    assert not (folder / "metrics.json").read_text().count('"fidelity"')  # --eval-tokens 0: no score
    before = (folder / "W_dec_0.safetensors").read_bytes()
    code, _, err = run(["transcoders", "train", "--model", "world-tiny", *FAST], capsys)  # finished: kept
    assert code == 2 and "--overwrite" in err and (folder / "W_dec_0.safetensors").read_bytes() == before
    from tests.helpers.tiny_checkpoints import make_tiny_llama

    local = make_tiny_llama(tmp_path / "llama")  # not a built-in: no default folder
    code, _, err = run(["transcoders", "train", "--model", str(local), "--no-progress"], capsys)
    assert code == 2 and "--out is needed" in err


def test_train_without_out_resumes_an_unfinished_default(world_tiny, tmp_path, capsys, monkeypatch):
    from circuits.training.train import train_for_model
    from transcoders.checkpoint import CHECKPOINT_FILE

    monkeypatch.setattr("circuits.training.defaults.transcoders_dir", lambda: tmp_path)
    folder = tmp_path / "world-tiny" / "default-clt"
    cfg = TrainConfig.from_flat(dict(n_features=16, tokens=4000, batch_size=256, buffer_tokens=2048, log_every=4,
                                     checkpoint_seconds=0))
    train_for_model(world_tiny, cfg, folder, progress=False, stop_at_step=8)
    assert (folder / CHECKPOINT_FILE).exists()
    code, _, err = run(["transcoders", "train", "--model", "world-tiny", "--no-progress"], capsys)
    assert code == 0, err
    assert load_transcoder(folder).n_features == 16 and not (folder / CHECKPOINT_FILE).exists()


def test_index_reads_long_documents_in_windows(world_tiny, tmp_path):
    """One long document is read as windows of at most INDEX_SEQ_LEN tokens (or the model's
    context, if shorter; so a batch's activations stay bounded), each with its own BOS; every token
    is still counted once."""
    from circuits.features.index import INDEX_SEQ_LEN, index_corpus
    from circuits.features.store import load_feature_index
    from circuits.corpora.sequences import encode_text
    from tests.transcoders.tiny import random_transcoder

    cfg = world_tiny.model.cfg
    tc = random_transcoder(n_layers=cfg.n_layers, d_model=cfg.d_model)
    text = " ".join(["calc: 36+59=95"] * 200)
    n_text = len(encode_text(world_tiny.tokenizer, text))
    window = min(INDEX_SEQ_LEN, cfg.n_ctx)
    assert n_text > 3 * window
    corpus = tmp_path / "long.txt"
    corpus.write_text(text + "\n")
    index_corpus(world_tiny, tc, tmp_path / "tc", corpus=str(corpus), max_tokens=10**6)
    meta = load_feature_index(tmp_path / "tc").meta
    assert meta["n_docs"] == -(-n_text // (window - 1)) and meta["n_tokens"] == n_text
