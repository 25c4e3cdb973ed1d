"""Tiny random Hugging Face checkpoints of real architectures, saved locally for offline tests.

    from tests.helpers.tiny_checkpoints import make_tiny_llama
    ckpt = make_tiny_llama(tmp_path / "llama")       # config.json, model.safetensors, tokenizer files
    loaded = circuits.models.load_model(str(ckpt))   # -> HookedTransformer via the local-checkpoint path

`make_tiny_llama`: LlamaForCausalLM with grouped-query attention (4 query heads, 2 key/value heads),
RMSNorm, rotary embeddings and a SiLU-gated MLP; d_model 64, 3 layers by default; its tokenizer
prepends a BOS token like Llama's. `make_tiny_gpt2`: GPT2LMHeadModel (LayerNorm, learned positions,
GELU MLP, biases), 2 layers. `make_tiny_qwen2`, `make_tiny_qwen3` and `make_tiny_mistral` are the
other supported Llama-like architectures (Mistral with a 4-token sliding window on every layer);
`make_tiny_llama3` has Llama-3 rope scaling. `make_tiny_gemma2` / `make_tiny_gemma3`: pre- and
post-norms, GeGLU, scaled embeddings, alternating 4-token sliding-window / global layers, soft-capped
attention scores and logits (Gemma-2), q/k norms and two rope bases (Gemma-3);
`make_tiny_gemma3_rope_scaled` adds Gemma-3 4B+'s linear rope scaling (factor 8, global layers).
All use a byte-level BPE tokenizer (~300 tokens, any text encodes).
Weights are random but deterministic (seeded), with norm weights and biases perturbed away from
their 1/0 defaults so a conversion that drops them is caught. Building one takes well under a second.
"""

from __future__ import annotations

from pathlib import Path

import torch

_CORPUS = [
    "The capital of France is Paris. The capital of Texas is Austin.",
    "calc: 36+59=95 calc: 12+30=42 calc: 7+8=15",
    "Fact: the capital of the state containing Dallas is Austin.",
    "Kobe Bryant played basketball for the Lakers in Los Angeles.",
    "the quick brown fox jumps over the lazy dog, again and again.",
]


def _byte_bpe(specials: list[str], vocab_size: int = 320):
    """A small byte-level BPE tokenizer (every string encodes; no unknown tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tok


def _perturb_(model: torch.nn.Module, seed: int, scale: float = 0.1) -> None:
    """Move every 1-D parameter (norm weights, biases) away from its default, deterministically."""
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            if param.ndim == 1:
                param.add_(scale * torch.randn(param.shape, generator=gen))


def _save(model, tokenizer, directory: Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _bos_tokenizer():
    from transformers import PreTrainedTokenizerFast

    bpe = _byte_bpe(["<unk>", "<s>", "</s>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>",
                                        eos_token="</s>", add_bos_token=True)
    ids = {"vocab_size": bpe.get_vocab_size(), "bos_token_id": bpe.token_to_id("<s>"),
           "eos_token_id": bpe.token_to_id("</s>")}
    return tokenizer, ids


def _llama_like(config_cls, model_cls, directory: Path, n_layers: int, seed: int, **extra) -> Path:
    tokenizer, ids = _bos_tokenizer()
    fields = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  rms_norm_eps=1e-5, hidden_act="silu", initializer_range=0.1,
                  tie_word_embeddings=False, **ids)
    return _random_model(model_cls, config_cls(**{**fields, **extra}), seed, tokenizer, directory)


def _random_model(model_cls, config, seed: int, tokenizer, directory: Path) -> Path:
    """A seeded random model of `config` with perturbed norms and biases, saved with `tokenizer`."""
    torch.manual_seed(seed)
    model = model_cls(config).float().eval()
    _perturb_(model, seed)
    return _save(model, tokenizer, directory)


def make_tiny_llama(directory: Path, n_layers: int = 3, seed: int = 0) -> Path:
    """A tiny LlamaForCausalLM checkpoint (GQA, RMSNorm, rotary, SiLU-gated MLP) in `directory`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return _llama_like(LlamaConfig, LlamaForCausalLM, directory, n_layers, seed,
                       rope_theta=10000.0)


def make_tiny_llama3(directory: Path, n_layers: int = 2, seed: int = 0) -> Path:
    """A tiny Llama-3-style checkpoint: rope scaling of type llama3 (frequency-dependent)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    return _llama_like(LlamaConfig, LlamaForCausalLM, directory, n_layers, seed,
                       rope_parameters=rope, rope_scaling=rope)


def make_tiny_qwen2(directory: Path, n_layers: int = 2, seed: int = 0) -> Path:
    """A tiny Qwen2ForCausalLM checkpoint (like Llama, plus biases on q/k/v)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return _llama_like(Qwen2Config, Qwen2ForCausalLM, directory, n_layers, seed,
                       rope_theta=10000.0, use_sliding_window=False)


def make_tiny_mistral(directory: Path, n_layers: int = 2, seed: int = 0) -> Path:
    """A tiny MistralForCausalLM checkpoint (like Llama, with a 4-token sliding window)."""
    from transformers import MistralConfig, MistralForCausalLM

    return _llama_like(MistralConfig, MistralForCausalLM, directory, n_layers, seed,
                       rope_theta=10000.0, sliding_window=4, head_dim=16)


def make_tiny_qwen3(directory: Path, n_layers: int = 2, seed: int = 0) -> Path:
    """A tiny Qwen3ForCausalLM checkpoint (like Llama, plus RMSNorm on queries and keys)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    return _llama_like(Qwen3Config, Qwen3ForCausalLM, directory, n_layers, seed,
                       rope_theta=10000.0, head_dim=16, use_sliding_window=False)


def make_tiny_gpt2(directory: Path, n_layers: int = 2, seed: int = 0) -> Path:
    """A tiny GPT2LMHeadModel checkpoint (LayerNorm, learned positions, GELU MLP) in `directory`."""
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = _byte_bpe(["<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>",
                                        eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    eot = bpe.token_to_id("<|endoftext|>")
    config = GPT2Config(vocab_size=bpe.get_vocab_size(), n_positions=128, n_embd=64, n_layer=n_layers,
                        n_head=4, activation_function="gelu_new", initializer_range=0.1,
                        bos_token_id=eot, eos_token_id=eot)
    return _random_model(GPT2LMHeadModel, config, seed, tokenizer, directory)


def _gemma_like(config_cls, model_cls, directory: Path, n_layers: int, seed: int, **extra) -> Path:
    tokenizer, ids = _bos_tokenizer()
    config = config_cls(
        hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24, max_position_embeddings=128,
        rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh", initializer_range=0.1,
        sliding_window=4, layer_types=["sliding_attention", "full_attention"] * (n_layers // 2)
        + ["sliding_attention"] * (n_layers % 2), tie_word_embeddings=True, pad_token_id=0,
        **ids, **extra)
    config._attn_implementation = "eager"  # soft-capping needs eager attention in transformers
    return _random_model(model_cls, config, seed, tokenizer, directory)


def make_tiny_gemma2(directory: Path, n_layers: int = 2, seed: int = 0) -> Path:
    """A tiny Gemma2ForCausalLM: soft caps small enough (logits 5, attention scores 3) to matter."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    return _gemma_like(Gemma2Config, Gemma2ForCausalLM, directory, n_layers, seed,
                       final_logit_softcapping=5.0, attn_logit_softcapping=3.0)


def make_tiny_gemma3(directory: Path, n_layers: int = 2, seed: int = 0) -> Path:
    """A tiny Gemma3ForCausalLM (text): q/k norms, rope base 10^4 on sliding and 10^6 on global layers."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    rope = {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}}
    return _gemma_like(Gemma3TextConfig, Gemma3ForCausalLM, directory, n_layers, seed,
                       rope_parameters=rope)


def make_tiny_gemma3_rope_scaled(directory: Path, n_layers: int = 2, seed: int = 0) -> Path:
    """Gemma-3 4B+ style rope: linear scaling (factor 8) on the global layers only, written as
    transformers 4 did (rope_scaling + rope_local_base_freq; transformers 5 reads it per layer type)."""
    import json

    path = make_tiny_gemma3(directory, n_layers, seed)
    config = json.loads((path / "config.json").read_text())
    config.pop("rope_parameters", None)
    config.update(rope_scaling={"rope_type": "linear", "factor": 8.0}, rope_theta=1000000.0,
                  rope_local_base_freq=10000.0)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path


def make_tiny_gemma3_multimodal(directory: Path, seed: int = 0) -> Path:
    """A tiny Gemma3ForConditionalGeneration (the form of Gemma-3 4B+ checkpoints): a 2-layer Gemma-3
    language model with 4B+'s linear rope scaling on the global layer, plus a 1-layer SigLIP vision
    tower that tracing never uses."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    tokenizer, ids = _bos_tokenizer()
    rope = {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0}}
    text = Gemma3TextConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, query_pre_attn_scalar=24, max_position_embeddings=128, rms_norm_eps=1e-6,
        hidden_activation="gelu_pytorch_tanh", initializer_range=0.1, sliding_window=4,
        layer_types=["sliding_attention", "full_attention"], pad_token_id=0, vocab_size=ids["vocab_size"],
        rope_parameters=rope)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                image_size=28, patch_size=14)
    n = ids["vocab_size"]
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, image_token_index=n - 1,
                          boi_token_index=n - 2, eoi_token_index=n - 3, bos_token_id=ids["bos_token_id"],
                          eos_token_id=ids["eos_token_id"], pad_token_id=0, tie_word_embeddings=True)
    config._attn_implementation = "eager"
    return _random_model(Gemma3ForConditionalGeneration, config, seed, tokenizer, directory)
