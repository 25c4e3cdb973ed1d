"""Configs written before TrainConfig nested the architecture (flat training_config.json files and
checkpoints) still load (that a flat checkpoint resumes exactly as a nested one, through the CLI, is
tests/circuits/test_config_resume.py)."""

from __future__ import annotations

import json

import pytest

from transcoders.config import TranscoderArchitecture
from transcoders.formats import TRAINING_CONFIG_JSON, read_training_files
from transcoders.train_config import TrainConfig

# The shape of a training_config.json written before the nesting (smollm2's default PLT).
FLAT_TRAIN_CONFIG = {
    "kind": "plt", "n_features": 512, "activation": "jumprelu", "topk": None, "skip": False,
    "input_hook": "ln2.hook_normalized", "output_hook": "hook_mlp_out", "tokens": 150000, "batch_size": 512,
    "seq_len": 64, "model_batch": 16, "buffer_tokens": 4096, "activation_tokens": 12000, "lr": 0.002,
    "lr_warmup_steps": 50, "lr_decay_frac": 0.2, "grad_clip": 1.0, "sparsity_coef": 0.1, "sparsity_c": 1.0,
    "sparsity_warmup_frac": 0.5, "preact_coef": 3e-06, "revive_after_tokens": None, "threshold_init": 0.5,
    "jumprelu_bandwidth": 0.5, "dead_after_tokens": 1000000, "seed": 0, "checkpoint_seconds": 60.0,
    "log_every": 25, "cache_dir": None, "threads": None}
FLAT_RECORD = {
    "model_name": "smollm2-135m", "source_id": "smollm2-135m:f912d024d8be2a8e:builtin:python-docstrings",
    "train_config": FLAT_TRAIN_CONFIG,
    "transcoder_config": {"kind": "plt", "n_layers": 30, "d_model": 576, "n_features": 512, "activation": "jumprelu",
                          "topk": None, "skip": False, "jumprelu_bandwidth": 0.5,
                          "input_hook": "ln2.hook_normalized", "output_hook": "hook_mlp_out"},
    "world_size": 1, "normalization": {"s_in": [1.0] * 30, "s_out": [1.0] * 30}}

SMALL = dict(n_features=32, tokens=6_000, batch_size=256, buffer_tokens=2048, seq_len=16, model_batch=32,
             log_every=5, lr=3e-3, lr_warmup_steps=4, checkpoint_seconds=0, threads=1)


def test_a_flat_training_config_json_reads_as_the_nested_config(tmp_path):
    (tmp_path / TRAINING_CONFIG_JSON).write_text(json.dumps(FLAT_RECORD, indent=2))
    cfg = TrainConfig.from_flat(read_training_files(tmp_path)["training_config"]["train_config"])
    assert cfg.transcoder == TranscoderArchitecture(kind="plt", n_features=512, jumprelu_bandwidth=0.5)
    assert (cfg.tokens, cfg.activation_tokens, cfg.batch_size) == (150000, 12000, 512)
    flat = cfg.flat()
    assert {k: flat[k] for k in FLAT_TRAIN_CONFIG} == FLAT_TRAIN_CONFIG  # nothing lost or renamed
    added = {k: v for k, v in flat.items() if k not in FLAT_TRAIN_CONFIG}  # fields added since: their defaults
    assert added == {"activation_dtype": "float32", "eval_tokens": None, "eval_every_tokens": None, "cache_dtype": "bfloat16",
                     "recon_loss": "sum", "decoder_init": "uniform", "encoder_bias_init": "zero",
                     "decoder_unit_norm": False, "auxk_coef": 0.0, "auxk_k": None, "encoder_init": "uniform",
                     "skip_init": "zero", "skip_lr_scale": 1.0}  # the old recipe's values
    assert TrainConfig.model_validate(cfg.model_dump()) == cfg  # the nested form round-trips
    assert cfg.transcoder.fitted(30, 576).model_dump() == FLAT_RECORD["transcoder_config"]


def test_flat_names_and_nested_dicts_give_the_same_config():
    nested = TrainConfig(transcoder=TranscoderArchitecture(kind="plt", n_features=64), tokens=5000)
    assert TrainConfig.from_flat({"kind": "plt", "n_features": 64, "tokens": 5000}) == nested
    assert TrainConfig.from_flat({"transcoder": {"kind": "plt", "n_features": 64}, "tokens": 5000}) == nested
    assert nested.updated({"n_features": 16}).transcoder.n_features == 16 and nested.transcoder.n_features == 64
    with pytest.raises(ValueError, match="Extra inputs"):
        TrainConfig.from_flat({"n_feature": 64})
