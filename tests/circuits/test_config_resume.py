"""`circuits transcoders train --resume` reads checkpoints written before the configs nested (the
CLI's side of tests/transcoders/test_config_upgrade.py, which stays free of `circuits`)."""

from __future__ import annotations

import shutil

import torch

from tests.transcoders.test_config_upgrade import SMALL
from tests.transcoders.tiny import tiny_model, token_sequences, train_tiny
from transcoders.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from transcoders.train_config import TrainConfig


def test_a_flat_checkpoint_resumes_exactly_as_a_nested_one(tmp_path):
    from circuits.cli.transcoders import resolve_config

    torch.set_num_threads(1)
    model, seqs = tiny_model(), token_sequences(600)
    part = train_tiny(model, seqs, tmp_path / "nested", SMALL, stop_at_step=10)
    assert part.transcoder is None
    shutil.copytree(tmp_path / "nested", tmp_path / "flat")
    tensors, meta = load_checkpoint(tmp_path / "flat" / CHECKPOINT_FILE)
    nested_cfg = TrainConfig.model_validate(meta["train_config"])
    meta["train_config"] = nested_cfg.flat()  # as checkpoints were written before the nesting
    meta.pop("format_version")
    save_checkpoint(tmp_path / "flat" / CHECKPOINT_FILE, tensors, meta)
    assert "transcoder" not in load_checkpoint(tmp_path / "flat" / CHECKPOINT_FILE)[1]["train_config"]

    assert resolve_config("tiny", tmp_path / "flat", True, {}) == nested_cfg  # the CLI's --resume reads it
    a = train_tiny(model, seqs, tmp_path / "nested", SMALL, resume=True)
    b = train_tiny(model, seqs, tmp_path / "flat", SMALL, resume=True)
    assert a.resumed_from_step == b.resumed_from_step == 10
    for (name, x), y in zip(a.transcoder.state_dict().items(), b.transcoder.state_dict().values()):
        assert torch.equal(x, y), name
