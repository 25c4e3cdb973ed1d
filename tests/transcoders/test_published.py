"""Published transcoder layouts (tests/helpers/published_transcoders.py): each loads with the right
weights, orientation, activation and hooks, lazily and eagerly alike; hub references resolve offline
from a local huggingface_hub cache; broken inputs fail in one line naming the file and the fix."""

from __future__ import annotations

import pytest
import torch
import yaml

from tests.helpers.published_transcoders import (LAYOUTS, REVISION, layout_files, make_hub_repo,
                                                 reference_transcoder, write_layout)
from transcoders.errors import TranscoderError
from transcoders.loading import load_transcoder
from transcoders.lazy import LazyTranscoder

L, D, F = 3, 16, 32
HOOKS = {"gemmascope2-plt": ("mlp.hook_in", "mlp.hook_out"), "gemmascope2-clt": ("mlp.hook_in", "mlp.hook_out"),
         "plt": ("hook_resid_mid", "hook_mlp_out")}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_layout_loads_the_reference_weights(layout, tmp_path, hub_cache):
    ref = reference_transcoder(layout, L, D, F)
    path = write_layout(layout, ref, tmp_path / layout, hub_cache)
    eager = load_transcoder(path)
    lazy = load_transcoder(path, lazy=True)
    assert isinstance(lazy, LazyTranscoder)
    kind, act, skip = LAYOUTS[layout]
    for tc in (eager, lazy):
        assert (tc.cfg.kind, tc.cfg.activation, tc.cfg.skip, tc.cfg.n_features) == (kind, act, skip, F)
        assert (tc.cfg.input_hook, tc.cfg.output_hook) == HOOKS.get(layout, ("ln2.hook_normalized", "hook_mlp_out"))
    # exact weights in our orientation (the reference is already rounded to the layout's dtype)
    for l in range(L):
        feats = torch.tensor([0, 5, F - 1])
        for tc in (eager, lazy):
            torch.testing.assert_close(tc.encoder_rows(l, feats), ref.W_enc[l, feats], rtol=0, atol=0)
            torch.testing.assert_close(tc.decoder_rows(l, feats), ref.W_dec[l][feats], rtol=0, atol=0)
            torch.testing.assert_close(tc.b_enc[l], ref.b_enc[l], rtol=0, atol=0)
            if skip:
                torch.testing.assert_close(tc.skip_matrix(l), ref.W_skip[l], rtol=0, atol=0)
    x = torch.randn(7, L, D)
    for a, b, c in zip(ref(x), eager(x), lazy(x)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-5)
    assert lazy.weight_digest() == eager.weight_digest()
    # the one-layer forward used by interventions: lazy reads only active decoder rows, same result
    acts = [eager.layer_features(x[:, l], l) for l in range(L)]
    for l in range(L):
        torch.testing.assert_close(lazy.decode_layer(acts, l, x[:, l]), eager.decode_layer(acts, l, x[:, l]),
                                   rtol=1e-5, atol=1e-5)


def test_weights_stay_in_their_dtype_and_are_not_copied(tmp_path):
    from transcoders import tensor_files

    ref = reference_transcoder("clt", L, D, F)
    path = write_layout("clt", ref, tmp_path / "clt")
    lazy = load_transcoder(path, lazy=True)
    assert lazy.storage_dtype == torch.bfloat16 and lazy.dtype == torch.float32
    assert lazy.decoder_rows(1, torch.tensor([0])).dtype == torch.float32
    # every weight matrix is a view into a mapping of its file, not a private copy
    for l in range(L):
        for t, name in ((lazy._views[l].enc, f"W_enc_{l}"), (lazy._views[l].dec, f"W_dec_{l}")):
            assert t.dtype == torch.bfloat16
            maps = tensor_files._MAPS[str(path / f"{name}.safetensors")]
            assert any(m.ctypes.data <= t.data_ptr() < m.ctypes.data + m.nbytes for m in maps)


def test_topk_config_is_topk_not_relu(tmp_path):
    ref = reference_transcoder("topk", L, D, F)
    lazy = load_transcoder(write_layout("topk", ref, tmp_path / "topk"), lazy=True)
    assert (lazy.cfg.activation, lazy.cfg.topk) == ("topk", 4)
    x = torch.randn(20, D) * 3
    for l in range(L):
        acts = lazy.activate_layer(lazy.encode_layer(x, l), l)
        assert int((acts != 0).sum(-1).max()) <= 4
        assert int((acts != 0).sum(-1).max()) == 4  # random inputs do fill all k slots


def test_topk_without_k_is_refused_in_one_line(tmp_path):
    path = write_layout("topk", reference_transcoder("topk", L, D, F), tmp_path / "topk")
    cfg = yaml.safe_load((path / "config.yaml").read_text())
    del cfg["k"]
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(TranscoderError, match=r"config.yaml: activation topk needs k \(add `k: "):
        load_transcoder(path, lazy=True)


def test_unknown_activation_is_refused(tmp_path):
    path = write_layout("plt", reference_transcoder("plt", L, D, F), tmp_path / "plt")
    cfg = yaml.safe_load((path / "config.yaml").read_text())
    cfg["activation"] = "softplus"
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(TranscoderError, match="activation 'softplus' is not one of"):
        load_transcoder(path, lazy=True)


def test_missing_file_and_foreign_shape_name_the_file(tmp_path):
    ref = reference_transcoder("clt", L, D, F)
    path = write_layout("clt", ref, tmp_path / "clt")
    (path / "W_dec_1.safetensors").unlink()
    with pytest.raises(TranscoderError, match=r"(missing transcoder file .*|lacks )W_dec_1.safetensors"):
        load_transcoder(path, lazy=True)
    path = write_layout("plt", reference_transcoder("plt", L, D, F), tmp_path / "plt")
    other = layout_files("plt", reference_transcoder("plt", L, D + 1, F))["layer_2.safetensors"]
    (path / "layer_2.safetensors").write_bytes(other)
    with pytest.raises(TranscoderError, match=r"layer_2.safetensors.*(belong|different transcoders)"):
        load_transcoder(path, lazy=True)
    (path / "layer_1.safetensors").unlink()
    with pytest.raises(TranscoderError, match=r"lacks layer_1.safetensors"):
        load_transcoder(path, lazy=True)


def test_hub_repo_id_and_revision_resolve_offline(tmp_path, hub_cache):
    ref = reference_transcoder("clt", L, D, F)
    make_hub_repo(hub_cache, "mntss/clt-fixture-9k", layout_files("clt", ref))
    for spec in ("mntss/clt-fixture-9k", f"mntss/clt-fixture-9k@{REVISION}"):
        tc = load_transcoder(spec, lazy=True)
        assert tc.cfg.kind == "clt" and "snapshots" in tc.source
        torch.testing.assert_close(tc.decoder_rows(2, torch.tensor([3])), ref.W_dec[2][[3]], rtol=0, atol=0)
    # a subfolder of a repo, as circuit-tracer's owner/repo/path form
    ref_plt = reference_transcoder("plt", L, D, F)
    make_hub_repo(hub_cache, "mwhanna/many-sets", {f"width_16k/{k}": v for k, v in layout_files("plt", ref_plt).items()})
    tc = load_transcoder("mwhanna/many-sets/width_16k", lazy=True)
    torch.testing.assert_close(tc.encoder_rows(1, torch.tensor([2])), ref_plt.W_enc[1, [2]], rtol=0, atol=0)
    with pytest.raises(TranscoderError, match=r"mntss/not-cached/config.yaml.*not in the local Hugging Face cache"):
        load_transcoder("mntss/not-cached", lazy=True)


def test_circuit_tracers_first_config_form_loads(tmp_path, hub_cache):
    """Its first configs (e.g. configs/gemmascope-l0-0.yaml) had no model_kind and listed
    {id, layer, filepath} entries."""
    ref = reference_transcoder("gemmascope-npz", L, D, F)
    path = write_layout("gemmascope-npz", ref, tmp_path / "gs", hub_cache)
    cfg = yaml.safe_load((path / "config.yaml").read_text())
    del cfg["model_kind"]
    cfg["transcoders"] = [{"id": f"gemma-{i}", "layer": i, "filepath": f} for i, f in reversed(list(enumerate(cfg["transcoders"])))]
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    tc = load_transcoder(path, lazy=True)
    assert tc.cfg.kind == "plt"
    for l in range(L):
        torch.testing.assert_close(tc.encoder_rows(l, torch.tensor([1])), ref.W_enc[l, [1]], rtol=0, atol=0)


def test_a_listed_hf_file_missing_from_the_cache_is_named(tmp_path, hub_cache):
    ref = reference_transcoder("gemmascope-npz", L, D, F)
    path = write_layout("gemmascope-npz", ref, tmp_path / "gs", hub_cache)
    import shutil
    shutil.rmtree(next(hub_cache.glob("models--google--*")) / "snapshots" / REVISION / "layer_1")
    with pytest.raises(TranscoderError, match=r"layer_1/width_16k/average_l0_71/params.npz"):
        load_transcoder(path, lazy=True)
