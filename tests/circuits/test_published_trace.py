"""Published layouts traced on a tiny Llama-style checkpoint (RMSNorm with non-trivial weights):
each loads through circuits' loader, the replacement model reproduces the logits and edges equal
ablation effects on the lazily loaded transcoder; circuit-tracer's mlp.hook_in is folded exactly;
`circuits trace --transcoders owner/repo` works offline from a hub cache."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.circuits.attribution_checks import attribute
from circuits.replacement.local import build_local_replacement
from tests.helpers.oracles import replacement_logits
from circuits.replacement.hooks import load_fitting_transcoder
from tests.circuits.attribution_checks import edge_errors
from tests.helpers.published_transcoders import LAYOUTS, layout_files, make_hub_repo, reference_transcoder, write_layout


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    from circuits.models.pretrained import load_hf_checkpoint
    from tests.helpers.tiny_checkpoints import make_tiny_llama

    return load_hf_checkpoint(make_tiny_llama(tmp_path_factory.mktemp("llama"), n_layers=3), "cpu")


def _tokens(model, n=8, seed=0):
    return torch.randint(1, model.cfg.d_vocab, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_layout_traces(layout, llama, tmp_path, hub_cache):
    ref = reference_transcoder(layout, llama.cfg.n_layers, llama.cfg.d_model, n_features=48, seed=1)
    path = write_layout(layout, ref, tmp_path / layout, hub_cache)
    tc = load_fitting_transcoder(llama, path)
    tokens = _tokens(llama)
    rep = build_local_replacement(llama, tc, tokens)
    assert len(rep.features) > 0
    torch.testing.assert_close(replacement_logits(llama, tc, rep), llama(tokens[None])[0], rtol=0, atol=1e-4)
    attr = attribute(llama, tc, tokens, batch_size=16)
    worst, scale = edge_errors(llama, tc, attr, n_per_kind=6)
    assert scale > 0.01 and worst <= 5e-4 * max(1.0, scale), (worst, scale)
    if layout == "topk":
        per_lp = torch.zeros(3, 8, dtype=torch.long)
        per_lp.index_put_((rep.features.layer, rep.features.position), torch.ones_like(rep.features.layer), accumulate=True)
        assert int(per_lp.max()) <= 4


def test_lazy_and_eager_give_the_same_graph(llama, tmp_path):
    from transcoders.loading import load_transcoder

    ref = reference_transcoder("clt", llama.cfg.n_layers, llama.cfg.d_model, n_features=48, seed=2)
    path = write_layout("clt", ref, tmp_path / "clt")
    tokens = _tokens(llama, seed=3)
    a = attribute(llama, load_transcoder(path, lazy=True), tokens, batch_size=16)
    b = attribute(llama, load_transcoder(path), tokens, batch_size=16)
    assert torch.equal(a.feature_idx, b.feature_idx)
    from tests.circuits.attribution_checks import dense_adjacency
    torch.testing.assert_close(dense_adjacency(a), dense_adjacency(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("lazy", [True, False])
def test_mlp_hook_in_is_folded_exactly(llama, tmp_path, lazy):
    """circuit-tracer's mlp.hook_in is ln2's output after its weight: the folded transcoder reading
    ln2.hook_normalized must give the pre-activations of the original one on the real MLP input."""
    from transcoders.loading import load_transcoder

    ref = reference_transcoder("gemmascope2-plt", llama.cfg.n_layers, llama.cfg.d_model, n_features=48, seed=4)
    path = write_layout("gemmascope2-plt", ref, tmp_path / "gs2")
    tc = load_fitting_transcoder(llama, path) if lazy else load_transcoder(path)
    if not lazy:
        from circuits.replacement.hooks import adapt_hooks
        adapt_hooks(llama, tc, str(path))
    assert tc.cfg.input_hook == "ln2.hook_normalized" and tc.cfg.output_hook == "hook_mlp_out"
    assert any((b.ln2.w - 1).abs().max() > 1e-3 for b in llama.blocks)  # the weight matters here
    mlp_in, cache = {}, {}
    handles = [b.mlp.register_forward_pre_hook(lambda m, args, l=l: mlp_in.__setitem__(l, args[0][0]))
               for l, b in enumerate(llama.blocks)]
    try:
        _, cache = llama.run_with_cache(_tokens(llama)[None])
    finally:
        for h in handles:
            h.remove()
    for l in range(llama.cfg.n_layers):
        theirs = mlp_in[l] @ ref.W_enc[l].T + ref.b_enc[l]  # the published transcoder on its own hook
        ours = tc.encode_layer(cache[f"blocks.{l}.ln2.hook_normalized"][0], l)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        x_n = cache[f"blocks.{l}.ln2.hook_normalized"][0]
        torch.testing.assert_close(x_n @ tc.skip_matrix(l), mlp_in[l] @ ref.W_skip[l], rtol=1e-5, atol=1e-5)


def test_mlp_hook_in_bias_is_folded_on_layernorm_models(world_tiny, tmp_path):
    model = world_tiny.model
    ref = reference_transcoder("gemmascope2-clt", model.cfg.n_layers, model.cfg.d_model, n_features=16, seed=5)
    tc = load_fitting_transcoder(model, write_layout("gemmascope2-clt", ref, tmp_path / "gs2clt"))
    tokens = model.to_tokens("the capital of")[0]
    mlp_in = {}
    handles = [b.mlp.register_forward_pre_hook(lambda m, args, l=l: mlp_in.__setitem__(l, args[0][0]))
               for l, b in enumerate(model.blocks)]
    try:
        _, cache = model.run_with_cache(tokens[None])
    finally:
        for h in handles:
            h.remove()
    for l in range(model.cfg.n_layers):
        theirs = mlp_in[l] @ ref.W_enc[l].T + ref.b_enc[l]
        torch.testing.assert_close(tc.encode_layer(cache[f"blocks.{l}.ln2.hook_normalized"][0], l), theirs,
                                   rtol=1e-5, atol=1e-5)


def test_trace_cli_with_a_hub_repo_id_offline(world_tiny, tmp_path):
    model = world_tiny.model
    ref = reference_transcoder("clt", model.cfg.n_layers, model.cfg.d_model, n_features=16, seed=6)
    cache = tmp_path / "hub"
    make_hub_repo(cache, "mntss/clt-world-tiny", layout_files("clt", ref))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache),
           "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "g.json"
    run = subprocess.run([sys.executable, "-m", "circuits", "trace", "the capital of", "--model", "world-tiny",
                          "--transcoders", "mntss/clt-world-tiny", "--out", str(out)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert out.exists() and out.stat().st_size > 0
    bad = subprocess.run([sys.executable, "-m", "circuits", "trace", "the capital of", "--model", "world-tiny",
                          "--transcoders", "mntss/not-there"], capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "error:" in bad.stderr and "mntss/not-there" in bad.stderr


@pytest.fixture(scope="module")
def gemmas(tmp_path_factory):
    """Tiny Gemma-2 and Gemma-3 checkpoints: (HookedTransformer, transformers model) by name."""
    from transformers import AutoModelForCausalLM

    from circuits.models.pretrained import load_hf_checkpoint
    from tests.helpers.tiny_checkpoints import make_tiny_gemma2, make_tiny_gemma3

    out = {}
    for name, make in (("gemma2", make_tiny_gemma2), ("gemma3", make_tiny_gemma3)):
        path = make(tmp_path_factory.mktemp(name))
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
        out[name] = (load_hf_checkpoint(path, "cpu"), hf)
    return out


@pytest.mark.parametrize("layout", ["gemmascope2-plt", "gemmascope2-clt"])
@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_gemmascope2_hook_out_before_the_post_mlp_norm_traces_exactly(gemmas, arch, layout, tmp_path):
    """GemmaScope-2 configs read mlp.hook_in and write mlp.hook_out: on Gemma that is the MLP module's
    output, before the post-feedforward norm. The transcoder reconstructs exactly that tensor (checked
    against transformers' own MLP output) and the trace is exact: logits 1e-4, edges = ablation."""
    model, hf = gemmas[arch]
    assert "blocks.0.mlp.hook_out" in model.hook_dict  # Gemma models come with it (training can use it too)
    ref = reference_transcoder(layout, model.cfg.n_layers, model.cfg.d_model, n_features=48, seed=7)
    tc = load_fitting_transcoder(model, write_layout(layout, ref, tmp_path / layout))
    assert (tc.cfg.input_hook, tc.cfg.output_hook) == ("ln2.hook_normalized", "mlp.hook_out")
    tokens = _tokens(model, seed=2)
    mlp_out = {}
    handles = [layer.mlp.register_forward_hook(lambda m, args, out, l=l: mlp_out.__setitem__(l, out[0]))
               for l, layer in enumerate(hf.model.layers)]
    try:
        with torch.no_grad():
            hf(tokens[None])
    finally:
        for h in handles:
            h.remove()
    _, cache = model.run_with_cache(tokens[None])
    for l in range(model.cfg.n_layers):  # mlp.hook_out is transformers' MLP output, not the normed one
        torch.testing.assert_close(cache[f"blocks.{l}.mlp.hook_out"][0], mlp_out[l], rtol=1e-4, atol=1e-5)
        assert (cache[f"blocks.{l}.hook_mlp_out"][0] - mlp_out[l]).abs().max() > 1e-2
    rep = build_local_replacement(model, tc, tokens)
    assert len(rep.features) > 0 and rep.ln2_post_scale_layer_pos is not None
    torch.testing.assert_close(replacement_logits(model, tc, rep), model(tokens[None])[0], rtol=0, atol=1e-4)
    attr = attribute(model, tc, tokens, batch_size=16)
    worst, scale = edge_errors(model, tc, attr, n_per_kind=6)
    assert scale > 0.01 and worst <= 5e-4 * max(1.0, scale), (worst, scale)


def test_the_documented_gemma_2_2b_command_runs_offline(tmp_path, hub_cache):
    """docs/transcoder_formats.md's command, with its real ids:
    `circuits trace PROMPT --model google/gemma-2-2b --transcoders mntss/gemma-scope-transcoders`,
    from a Hugging Face cache holding a tiny Gemma-2 as google/gemma-2-2b and the transcoder repo in
    its published layout (config.yaml listing hf:// params.npz files of GemmaScope's own repo)."""
    import json

    from typer.testing import CliRunner

    from circuits.cli.main import app
    from tests.helpers.tiny_checkpoints import make_tiny_gemma2

    ckpt = make_tiny_gemma2(tmp_path / "gemma-2-2b")
    make_hub_repo(hub_cache, "google/gemma-2-2b", {p.name: p.read_bytes() for p in ckpt.iterdir() if p.is_file()})
    ref = reference_transcoder("gemmascope-npz", 2, 64, n_features=48, seed=1)
    write_layout("gemmascope-npz", ref, make_hub_repo(hub_cache, "mntss/gemma-scope-transcoders", {}), hub_cache)
    result = CliRunner().invoke(app, ["trace", "The capital of France is", "--model", "google/gemma-2-2b",
                                      "--transcoders", "mntss/gemma-scope-transcoders", "--json"])
    assert result.exit_code == 0, result.output[-2000:]
    summary = json.loads(result.output[result.output.index("{"):])
    assert summary["counts"]["features_before"] > 0 and summary["logits"]
