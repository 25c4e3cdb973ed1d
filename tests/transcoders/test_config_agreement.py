"""Config and weight files must agree (transcoders/agreement.py): every disagreement in every published
layout is one TranscoderError line, never a silent choice; the two documented inference rules (an
undeclared activation follows the files; stated values must match) are pinned here."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from tests.helpers.published_transcoders import LAYOUTS, reference_transcoder, write_layout
from transcoders.errors import TranscoderError
from transcoders.formats import save_transcoder
from transcoders.loading import load_transcoder

L, D, F = 3, 16, 32
YAML_LAYOUTS = sorted(name for name in LAYOUTS if name != "saelens")
JUMPRELU = sorted(name for name, (_, act, _) in LAYOUTS.items() if act == "jumprelu" and name != "saelens")


def _layout(name, tmp_path, hub_cache):
    return write_layout(name, reference_transcoder(name, L, D, F), tmp_path / name, hub_cache)


def _edit_config(path, **changes):
    cfg = yaml.safe_load((path / "config.yaml").read_text())
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))


def _refused(path, pattern):
    for lazy in (True, False):
        with pytest.raises(TranscoderError, match=pattern) as info:
            load_transcoder(path, lazy=lazy)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("layout", JUMPRELU)
def test_relu_declared_over_jumprelu_thresholds_is_refused(layout, tmp_path, hub_cache):
    path = _layout(layout, tmp_path, hub_cache)
    _edit_config(path, activation="relu")
    _refused(path, r"activation relu but the weight files carry JumpReLU thresholds")


@pytest.mark.parametrize("layout", JUMPRELU)
def test_topk_declared_over_jumprelu_weights_is_refused(layout, tmp_path, hub_cache):
    path = _layout(layout, tmp_path, hub_cache)
    _edit_config(path, activation="topk", k=4)
    _refused(path, r"activation topk but the weight files carry JumpReLU thresholds")


@pytest.mark.parametrize("layout", YAML_LAYOUTS)
@pytest.mark.parametrize("hook", ["feature_input_hook", "feature_output_hook"])
def test_a_config_without_a_hook_is_refused(layout, hook, tmp_path, hub_cache):
    path = _layout(layout, tmp_path, hub_cache)
    _edit_config(path, **{hook: None})
    _refused(path, f"no {hook}: name the hook")


@pytest.mark.parametrize("layout", YAML_LAYOUTS)
def test_a_stated_skip_must_match_the_files(layout, tmp_path, hub_cache):
    path = _layout(layout, tmp_path, hub_cache)
    has_skip = LAYOUTS[layout][2]
    _edit_config(path, skip=not has_skip)
    _refused(path, "says skip: false but the weight files carry W_skip" if has_skip
             else "says skip: true but the weight files have no W_skip")
    _edit_config(path, skip=has_skip)
    assert load_transcoder(path, lazy=True).cfg.skip == has_skip


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_nan_weight_is_refused_by_every_load(layout, tmp_path, hub_cache):
    path = _layout(layout, tmp_path, hub_cache)
    load_transcoder(path, lazy=True)  # healthy: loads (and is remembered as checked in this process)
    target = sorted(p for p in path.rglob("*.safetensors") if "W_dec" in p.name or "layer_1" in str(p))
    if not target:  # gemmascope-npz: its weights are in the hub cache
        target = sorted(hub_cache.rglob("layer_1/**/params.npz"))
        import numpy as np
        arrays = dict(np.load(target[0]))
        arrays["W_dec"][0, 0] = np.nan
        target[0].unlink()  # the snapshot file is a plain file here; write a new one (new inode)
        np.savez(target[0], **arrays)
    else:
        tensors = load_file(str(target[0]))
        key = next(k for k in tensors if k.lower().startswith("w_dec"))
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[-1] = float("nan")  # the last: in the part every layout uses
        target[0].unlink()
        save_file(tensors, str(target[0]))
    _refused(path, r"has NaN or infinite weights")


def test_disagreeing_declarations_are_refused(tmp_path, hub_cache):
    path = _layout("topk", tmp_path, hub_cache)
    _edit_config(path, circuits={"activation": "relu"})
    _refused(path, r"states the activation twice, differently \(activation: topk, circuits: activation: relu\)")
    _edit_config(path, circuits={"topk": 8})
    _refused(path, r"states TopK's k twice, differently \(k: 4, circuits: topk: 8\)")
    _edit_config(path, circuits=None, k=F + 1)
    _refused(path, rf"TopK k = {F + 1} is more than the {F} features per layer")
    _edit_config(path, k="four")
    _refused(path, r"k must be a positive whole number of features, not 'four'")
    _edit_config(path, activation="relu", k=4)
    _refused(path, r"a TopK k \(4\) is given but the activation is relu")


def _store_k(path, ks):
    for i, k in enumerate(ks):
        f = path / f"layer_{i}.safetensors"
        tensors = load_file(str(f))
        tensors["k"] = torch.tensor(k)
        save_file(tensors, str(f))


def test_undeclared_activation_follows_the_files(tmp_path, hub_cache):
    """The documented rule: no `activation:` -> JumpReLU with thresholds, TopK with a stored k, else ReLU."""
    clt = _layout("clt", tmp_path, hub_cache)
    assert load_transcoder(clt, lazy=True).cfg.activation == "jumprelu"
    plt = _layout("plt", tmp_path, hub_cache)
    _edit_config(plt, activation=None)
    assert load_transcoder(plt, lazy=True).cfg.activation == "relu"
    topk = _layout("topk", tmp_path, hub_cache)
    _edit_config(topk, activation=None, k=None)
    _store_k(topk, [4] * L)
    assert (load_transcoder(topk, lazy=True).cfg.activation, load_transcoder(topk, lazy=True).cfg.topk) == ("topk", 4)
    _edit_config(topk, activation="topk", k=6)  # the config's k against the files' k
    _refused(topk, r"states TopK's k twice, differently \(k: 6, the files' k: 4\)")
    _edit_config(topk, activation=None, k=None)
    _store_k(topk, [4, 4, 5])
    _refused(topk, r"the layer files store different TopK k \(\[4, 4, 5\]\)")


def test_a_folder_with_both_layouts_is_refused(tmp_path, hub_cache):
    clt = _layout("clt", tmp_path, hub_cache)
    plt = _layout("plt", tmp_path, hub_cache)
    (clt / "layer_0.safetensors").write_bytes((plt / "layer_0.safetensors").read_bytes())
    _refused(clt, r"model_kind cross_layer_transcoder but .* also holds layer_0.safetensors")


def test_both_spellings_of_one_tensor_are_refused(tmp_path, hub_cache):
    path = _layout("gemmascope2-plt", tmp_path, hub_cache)
    f = next(path.rglob("layer_1_*/params.safetensors"))
    tensors = load_file(str(f))
    tensors["W_skip"] = tensors["affine_skip_connection"].T.contiguous()
    save_file(tensors, str(f))
    _refused(path, r"has both 'affine_skip_connection' and 'W_skip'")


def _edit_saelens(path, layer=None, **changes):
    for cfg_file in sorted(path.glob("layer_*/cfg.json")):
        if layer is not None and cfg_file.parent.name != f"layer_{layer}":
            continue
        cfg = json.loads(cfg_file.read_text())
        for key, value in changes.items():
            if value is None:
                cfg.pop(key, None)
            else:
                cfg[key] = value
        cfg_file.write_text(json.dumps(cfg))


@pytest.mark.parametrize("architecture, message", [
    ("skip_transcoder", "activation relu but the weight files carry JumpReLU thresholds"),
    ("topk_skip_transcoder", "activation topk but the weight files carry JumpReLU thresholds"),
    ("jumprelu_transcoder", "says skip: false but the weight files carry W_skip"),
])
def test_saelens_architecture_must_match_the_tensors(architecture, message, tmp_path, hub_cache):
    path = _layout("saelens", tmp_path, hub_cache)
    _edit_saelens(path, architecture=architecture, k=4 if "topk" in architecture else None)
    _refused(path, message)


def test_saelens_layer_configs_must_agree(tmp_path, hub_cache):
    path = _layout("saelens", tmp_path, hub_cache)
    _edit_saelens(path, hook_name_out=None)
    _refused(path, r"no hook_name_out: name the hook the transcoder writes")
    path = _layout("saelens", tmp_path / "b", hub_cache)
    _edit_saelens(path, layer=2, hook_name="blocks.2.hook_resid_mid")
    _refused(path, r"layer_2/cfg.json: hook_name 'blocks.2.hook_resid_mid' is not layer 0's hook")
    path = _layout("saelens", tmp_path / "c", hub_cache)
    _edit_saelens(path, layer=1, d_sae=F * 2)
    _refused(path, rf"layer_1/cfg.json: d_sae is {2 * F} but .* has {F}")


def test_our_saved_transcoders_state_their_skip_and_load(tmp_path):
    from tests.transcoders.tiny import random_transcoder

    for skip in (False, True):
        tc = random_transcoder("plt", n_layers=2, skip=skip)
        out = save_transcoder(tc, tmp_path / f"s{skip}")
        assert yaml.safe_load((out / "config.yaml").read_text())["circuits"]["skip"] is skip
        assert load_transcoder(out, lazy=True).cfg.skip is skip


def test_the_finite_check_is_remembered_per_file_version(tmp_path, monkeypatch):
    """A stamp (files' path, size, mtime, inode) lets the next process skip the full pass; a rewritten
    file is read again."""
    from tests.transcoders.tiny import random_transcoder
    from transcoders import weights_check
    from transcoders.published import read_published

    out = save_transcoder(random_transcoder("clt", n_layers=2), tmp_path / "tc")
    stamps = tmp_path / "stamps"
    weights_check.check_finite_once(read_published(out).layers, stamps)
    assert len(list(stamps.iterdir())) == 1
    monkeypatch.setattr(weights_check, "_CHECKED", set())  # a new process

    def full_pass(layers):
        raise AssertionError("read again")

    monkeypatch.setattr(weights_check, "check_finite", full_pass)
    weights_check.check_finite_once(read_published(out).layers, stamps)  # the stamp: no full pass
    monkeypatch.undo()
    tensors = load_file(str(out / "W_dec_0.safetensors"))
    tensors["W_dec_0"].view(-1)[-1] = float("inf")
    (out / "W_dec_0.safetensors").unlink()
    save_file(tensors, str(out / "W_dec_0.safetensors"))
    with pytest.raises(TranscoderError, match=r"W_dec_0.safetensors: 'dec' of layer 0 has NaN or infinite"):
        weights_check.check_finite_once(read_published(out).layers, stamps)


def test_a_topk_our_trainer_once_wrote_beside_jumprelu_is_ignored(tmp_path):
    """`transcoders train --topk 4` (default JumpReLU) was accepted before and saved `circuits: topk: 4`,
    which never had an effect: such folders still load, as JumpReLU (the documented exception)."""
    from tests.transcoders.tiny import random_transcoder

    out = save_transcoder(random_transcoder("clt", n_layers=2), tmp_path / "old")
    _edit_config(out, circuits={"activation": "jumprelu", "topk": 4, "jumprelu_bandwidth": 0.5})
    cfg = load_transcoder(out, lazy=True).cfg
    assert (cfg.activation, cfg.topk) == ("jumprelu", None)
    _edit_config(out, k=4)  # a top-level k is circuit-tracer's key: a real disagreement
    _refused(out, r"a TopK k \(4\) is given but the activation is jump_relu")
