"""Transcoder data that must be refused, not used: integer weights (would be cast silently) and
NaN / infinite weights (NaN metrics); each a one-line error naming the file."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.transcoders.tiny import random_transcoder
from transcoders.errors import TranscoderError
from transcoders.formats import save_transcoder
from transcoders.loading import load_transcoder
from transcoders.loading import check_transcoder_weights


@pytest.fixture
def tc_dir(tmp_path):
    return save_transcoder(random_transcoder("clt", n_layers=2), tmp_path / "tc")


def _edit(path, key, fn):
    tensors = load_file(str(path))
    tensors[key] = fn(tensors[key])
    save_file(tensors, str(path))


def test_integer_weights_are_refused_at_load(tc_dir):
    _edit(tc_dir / "W_enc_1.safetensors", "W_enc_1", lambda t: t.round().to(torch.int32))
    for lazy in (False, True):
        with pytest.raises(TranscoderError, match=r"W_enc_1.safetensors.*int32, not floating point"):
            load_transcoder(tc_dir, lazy=lazy)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_found_and_the_file_named(tc_dir, bad):
    check_transcoder_weights(tc_dir)  # a healthy one passes

    def poison(t):
        t = t.clone()
        t.view(-1)[-1] = bad
        return t

    _edit(tc_dir / "W_dec_0.safetensors", "W_dec_0", poison)
    with pytest.raises(TranscoderError, match=r"W_dec_0.safetensors.*'dec' of layer 0 has NaN or infinite"):
        check_transcoder_weights(tc_dir)


@pytest.mark.parametrize("missing", ["W_enc_1.safetensors", "W_dec_1.safetensors", "W_enc_0.safetensors"])
def test_a_missing_layer_file_is_named(tc_dir, missing):
    (tc_dir / missing).unlink()
    with pytest.raises(TranscoderError, match=f"(lacks |missing transcoder file .*){missing}"):
        load_transcoder(tc_dir)
