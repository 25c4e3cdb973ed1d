"""The circuit-tracer directory format: round trips, exact tensor names/shapes/orientations,
directories written by circuit-tracer users, and clear errors for broken ones."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from tests.transcoders.tiny import random_transcoder
from transcoders.errors import TranscoderError
from transcoders.formats import normalize_hook, save_transcoder
from transcoders.loading import load_transcoder


@pytest.mark.parametrize("kind,activation,skip", [
    ("clt", "jumprelu", False), ("clt", "relu", True), ("plt", "jumprelu", True), ("plt", "topk", False)])
def test_round_trip_reproduces_forward(tmp_path, kind, activation, skip):
    extra = {"topk": 2} if activation == "topk" else {}
    tc = random_transcoder(kind=kind, activation=activation, skip=skip, **extra)
    save_transcoder(tc, tmp_path, model_name="m")
    back = load_transcoder(tmp_path)
    assert back.cfg == tc.cfg
    x = torch.randn(5, 3, 8)
    for a, b in zip(tc(x), back(x)):
        torch.testing.assert_close(a, b)


def test_clt_file_layout_matches_circuit_tracer(tmp_path):
    tc = random_transcoder(kind="clt", n_layers=3, d_model=8, n_features=6, skip=True)
    save_transcoder(tc, tmp_path, model_name="m")
    cfg = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert cfg["model_kind"] == "cross_layer_transcoder"
    assert cfg["feature_input_hook"] == "ln2.hook_normalized" and cfg["feature_output_hook"] == "hook_mlp_out"
    for i in range(3):
        enc = load_file(tmp_path / f"W_enc_{i}.safetensors")
        assert {k: tuple(v.shape) for k, v in enc.items()} == {
            f"W_enc_{i}": (6, 8), f"b_enc_{i}": (6,), f"b_dec_{i}": (8,), f"threshold_{i}": (6,), f"W_skip_{i}": (8, 8)}
        dec = load_file(tmp_path / f"W_dec_{i}.safetensors")
        assert tuple(dec[f"W_dec_{i}"].shape) == (6, 3 - i, 8)
    # circuit-tracer's CLT adds input_acts @ W_skip (batched over layers): same orientation as ours
    x = torch.randn(4, 8)
    torch.testing.assert_close(x @ load_file(tmp_path / "W_enc_1.safetensors")["W_skip_1"], x @ tc.W_skip[1])


def test_plt_file_layout_and_skip_orientation(tmp_path):
    tc = random_transcoder(kind="plt", n_layers=2, d_model=8, n_features=6, skip=True)
    save_transcoder(tc, tmp_path, model_name="m")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["model_kind"] == "transcoder_set"
    f = load_file(tmp_path / "layer_1.safetensors")
    assert {k: tuple(v.shape) for k, v in f.items()} == {
        "W_enc": (6, 8), "W_dec": (6, 8), "b_enc": (6,), "b_dec": (8,),
        "activation_function.threshold": (6,), "W_skip": (8, 8)}
    # circuit-tracer's single-layer transcoder computes input_acts @ W_skip.T
    x = torch.randn(4, 8)
    torch.testing.assert_close(x @ f["W_skip"].T, x @ tc.W_skip[1])
    # and reconstructs with F.linear(x, W_enc, b_enc) -> JumpReLU -> acts @ W_dec + b_dec (+ skip)
    pre = torch.nn.functional.linear(x, f["W_enc"], f["b_enc"])
    acts = pre * (pre > f["activation_function.threshold"])
    theirs = acts @ f["W_dec"] + f["b_dec"] + x @ f["W_skip"].T
    ours = tc(torch.stack([x, x], dim=1))[0][:, 1]
    torch.testing.assert_close(theirs, ours)


def _write_user_clt(d, L=3, F=5, dm=4, dtype=torch.bfloat16):
    """A CLT directory as circuit-tracer's CrossLayerTranscoder.to_safetensors + cache writes it."""
    torch.manual_seed(1)
    d.mkdir()
    W = {}
    for i in range(L):
        enc = {f"W_enc_{i}": torch.randn(F, dm), f"b_enc_{i}": torch.randn(F), f"b_dec_{i}": torch.randn(dm),
               f"threshold_{i}": torch.rand(F)}
        save_file({k: v.to(dtype) for k, v in enc.items()}, str(d / f"W_enc_{i}.safetensors"))
        dec = torch.randn(F, L - i, dm)
        save_file({f"W_dec_{i}": dec.to(dtype)}, str(d / f"W_dec_{i}.safetensors"))
        W[i] = (enc, dec)
    (d / "config.yaml").write_text(yaml.safe_dump({
        "model_kind": "cross_layer_transcoder", "model_name": "user-model", "scan": "user/clt@main",
        "feature_input_hook": "blocks.{layer}.ln2.hook_normalized", "feature_output_hook": "hook_mlp_out"}))
    return W


def test_loads_clt_written_by_circuit_tracer_users(tmp_path):
    W = _write_user_clt(tmp_path / "clt")
    tc = load_transcoder(tmp_path / "clt")
    assert (tc.cfg.kind, tc.cfg.activation, tc.cfg.n_layers, tc.n_features) == ("clt", "jumprelu", 3, 5)
    assert tc.cfg.input_hook == "ln2.hook_normalized" and tc.W_enc.dtype == torch.float32
    enc0, dec0 = W[0]
    torch.testing.assert_close(tc.decoder_to_layer(0, 2), dec0[:, 2].to(torch.bfloat16).float())
    torch.testing.assert_close(tc.threshold[0], enc0["threshold_0"].to(torch.bfloat16).float())


def test_loads_transcoder_set_with_listed_paths_and_relu(tmp_path):
    d = tmp_path / "plt"
    (d / "weights").mkdir(parents=True)
    for i in range(2):
        save_file({"W_enc": torch.randn(5, 4), "W_dec": torch.randn(5, 4), "b_enc": torch.randn(5),
                   "b_dec": torch.randn(4)}, str(d / "weights" / f"tc_{i}.safetensors"))
    (d / "config.yaml").write_text(yaml.safe_dump({
        "model_kind": "transcoder_set", "scan": "x", "feature_input_hook": "hook_resid_mid",
        "feature_output_hook": "hook_mlp_out", "transcoders": ["weights/tc_0.safetensors", "weights/tc_1.safetensors"]}))
    tc = load_transcoder(d)
    assert (tc.cfg.kind, tc.cfg.activation, tc.cfg.n_layers, tc.cfg.input_hook) == ("plt", "relu", 2, "hook_resid_mid")


def test_interrupted_write_does_not_load(tmp_path):
    save_transcoder(random_transcoder(), tmp_path)
    (tmp_path / "config.yaml").unlink()  # what a kill before the last rename leaves
    with pytest.raises(TranscoderError, match="no config.yaml"):
        load_transcoder(tmp_path)


def test_overwrite_with_fewer_layers_leaves_no_stale_files(tmp_path):
    save_transcoder(random_transcoder(n_layers=3), tmp_path)
    save_transcoder(random_transcoder(n_layers=2), tmp_path)
    assert not (tmp_path / "W_enc_2.safetensors").exists()
    assert load_transcoder(tmp_path).n_layers == 2


def test_wrong_shape_names_the_file(tmp_path):
    _write_user_clt(tmp_path / "clt")
    save_file({"W_dec_1": torch.randn(5, 3, 4)}, str(tmp_path / "clt" / "W_dec_1.safetensors"))
    with pytest.raises(TranscoderError, match=r"W_dec_1.safetensors: 'W_dec_1' has shape \(5, 3, 4\), expected \(5, 2, 4\)"):
        load_transcoder(tmp_path / "clt")


def test_missing_directory_and_bad_kind(tmp_path):
    with pytest.raises(TranscoderError, match="does not exist"):
        load_transcoder(tmp_path / "nope")
    (tmp_path / "config.yaml").write_text("model_kind: sae\n")
    with pytest.raises(TranscoderError, match="model_kind"):
        load_transcoder(tmp_path)


def test_normalize_hook():
    assert normalize_hook("blocks.{layer}.ln2.hook_normalized") == "ln2.hook_normalized"
    assert normalize_hook("blocks.3.hook_mlp_out") == "hook_mlp_out"
    assert normalize_hook("hook_resid_mid") == "hook_resid_mid"
