"""`--dtype` for the model: bfloat16 / float16 weights and forward, float32 attribution.

Tolerances (bfloat16 has 8 significant bits, a relative step of 2^-7 = 7.8e-3):
- the local replacement model reproduces the bf16 model's own logits to 1e-2 x max(1, max |logit|)
  (measured: 0.0, since the float32 error terms round back to the bf16 MLP outputs exactly);
- every sampled edge equals the effect of ablating its source in the frozen bf16 model to
  2e-2 x max(1, max |A|) (measured 6.4e-3 on Llama, 5.8e-3 on Gemma-3 at mlp.hook_out);
the float32 exactness tests (tests/circuits/test_attribution.py) are unchanged.
"""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from tests.circuits.attribution_checks import attribute
from circuits.cli.main import app
from circuits.errors import CircuitsError
from circuits.models import load_model
from circuits.models.dtype import dtype_name, model_dtype
from circuits.replacement.hooks import adapt_hooks
from circuits.replacement.local import build_local_replacement
from tests.helpers.oracles import replacement_logits
from tests.circuits.attribution_checks import edge_errors, random_transcoder
from tests.helpers import tiny_checkpoints as tiny
from tests.helpers.published_transcoders import reference_transcoder, write_layout


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("dtype")
    return {"llama": tiny.make_tiny_llama(root / "llama"), "gemma3": tiny.make_tiny_gemma3(root / "gemma3")}


def _tokens(model, n=9, seed=1):
    return torch.randint(1, model.cfg.d_vocab, (n,), generator=torch.Generator().manual_seed(seed))


def test_dtype_names():
    assert [dtype_name(v) for v in ("float32", "bf16", "FP16", torch.bfloat16, None)] == \
        ["float32", "bfloat16", "float16", "bfloat16", "float32"]
    assert model_dtype("bf16") is torch.bfloat16
    for bad in ("float8", "int8", "float64", ""):
        with pytest.raises(CircuitsError, match="--dtype must be one of float32, bfloat16, float16"):
            dtype_name(bad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_checkpoints_and_built_in_models_load_in_the_dtype(checkpoints, world_tiny, dtype):
    for spec in (str(checkpoints["llama"]), "world-tiny"):
        loaded = load_model(spec, dtype=dtype)
        assert loaded.model.cfg.dtype == dtype
        assert {p.dtype for p in loaded.model.parameters()} == {dtype}
        fp32 = load_model(spec)
        assert {p.dtype for p in fp32.model.parameters()} == {torch.float32}
        # the same weights, rounded once
        for (name, p), (_, q) in zip(loaded.model.named_parameters(), fp32.model.named_parameters()):
            torch.testing.assert_close(p, q.to(dtype), rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("arch,hook_out", [("llama", False), ("gemma3", True)])
def test_bf16_trace_reproduces_the_bf16_logits_and_edges_equal_ablation(checkpoints, arch, hook_out):
    model = load_model(str(checkpoints[arch]), dtype="bfloat16").model
    tc = random_transcoder(model.cfg.n_layers, model.cfg.d_model, "clt", skip=True, seed=3)
    if hook_out:  # GemmaScope-2's hook: before the post-MLP norm
        tc.cfg.output_hook = "mlp.hook_out"
        adapt_hooks(model, tc, "fixture")
    tokens = _tokens(model)
    rep = build_local_replacement(model, tc, tokens)
    with torch.no_grad():
        original = model(tokens[None])[0]
    assert original.dtype == torch.bfloat16
    replaced = replacement_logits(model, tc, rep)
    assert (replaced.float() - original.float()).abs().max() <= 1e-2 * max(1.0, float(original.abs().max()))
    attr = attribute(model, tc, tokens, batch_size=16)
    assert attr.feature_rows.dtype == attr.logit_rows.dtype == torch.float32  # attribution is float32
    worst, scale = edge_errors(model, tc, attr, n_per_kind=8)
    assert scale > 0.1 and worst <= 2e-2 * max(1.0, scale), (worst, scale)


def test_trace_cli_with_dtype_records_it(checkpoints, tmp_path):
    ckpt = checkpoints["llama"]
    ref = reference_transcoder("gemmascope2-plt", 3, 64, n_features=48, seed=1)
    folder = write_layout("gemmascope2-plt", ref, tmp_path / "tc")
    full = tmp_path / "g.npz"
    result = CliRunner().invoke(app, ["trace", "The capital of France is", "--model", str(ckpt),
                                      "--transcoders", str(folder), "--dtype", "bf16", "--json", "--full", str(full)])
    assert result.exit_code == 0, result.output[-2000:]
    summary = json.loads(result.output[result.output.index("{"):])
    assert summary["logits"]
    from graphs import load_graph

    assert load_graph(full).model["dtype"] == "bfloat16"
