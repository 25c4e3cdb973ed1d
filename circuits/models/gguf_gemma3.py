"""A Gemma-3 GGUF file (llama.cpp's format) as a Hugging Face Gemma3ForCausalLM, dequantized to fp32.

Facts of the format used here (llama.cpp's convert_hf_to_gguf.py and gguf-py's tensor map):
- tensors are named `token_embd`, `output_norm`, `blk.{l}.attn_q` ... (GGUF_TO_HF below); a matrix
  of GGUF shape [in, out] reads back (gguf.quants.dequantize) as a numpy [out, in] array, the
  Hugging Face layout; Gemma's q/k projections are not permuted (unlike Llama's);
- Gemma's RMSNorm weights are stored as 1 + w (the converter adds one): we subtract it back;
- the output layer is tied to the embeddings (no `output` tensor).
The metadata gives the shapes, epsilon, global rope base and window. What Gemma-3's GGUF does not
record is taken from Gemma-3's published config (the same for 270M and 1B): every 6th layer is
global (the others slide), local layers use rope base 10,000, queries are scaled by
1/sqrt(head_dim) (query_pre_attn_scalar = head_dim), no soft-capping.
"""

from __future__ import annotations

from pathlib import Path

import torch

from circuits.errors import CircuitsError

GGUF_TO_HF = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
}
BLOCK_GGUF_TO_HF = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm", "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm", "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm", "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
SLIDING_WINDOW_PATTERN = 6  # Gemma-3: five local layers, then one global
ROPE_LOCAL_BASE = 10000.0


def hf_name(gguf_name: str) -> str:
    """The Hugging Face parameter name of a Gemma-3 GGUF tensor."""
    if gguf_name in GGUF_TO_HF:
        return GGUF_TO_HF[gguf_name]
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in BLOCK_GGUF_TO_HF and parts[3] == "weight":
        return f"model.layers.{int(parts[1])}.{BLOCK_GGUF_TO_HF[parts[2]]}.weight"
    raise CircuitsError(f"unexpected tensor '{gguf_name}' in a Gemma-3 GGUF file")


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise CircuitsError(f"the GGUF file has no '{key}' (not a Gemma-3 GGUF?)")
        return default
    return field.contents()


def gemma3_config(reader):
    """A Gemma3TextConfig from a GGUF reader's metadata (plus the Gemma-3 facts it lacks)."""
    from transformers import Gemma3TextConfig

    arch = _field(reader, "general.architecture")
    if arch != "gemma3":
        raise CircuitsError(f"the GGUF file holds a '{arch}' model, not gemma3")

    def meta(key, default=None):
        return _field(reader, f"gemma3.{key}", default)

    n_layers = int(meta("block_count"))
    head_dim = int(meta("attention.key_length"))
    vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    layer_types = ["full_attention" if (l + 1) % SLIDING_WINDOW_PATTERN == 0 else "sliding_attention"
                   for l in range(n_layers)]
    rope = {"full_attention": {"rope_type": "default", "rope_theta": float(meta("rope.freq_base"))},
            "sliding_attention": {"rope_type": "default", "rope_theta": ROPE_LOCAL_BASE}}
    return Gemma3TextConfig(
        vocab_size=vocab, hidden_size=int(meta("embedding_length")),
        intermediate_size=int(meta("feed_forward_length")), num_hidden_layers=n_layers,
        num_attention_heads=int(meta("attention.head_count")),
        num_key_value_heads=int(meta("attention.head_count_kv")), head_dim=head_dim,
        query_pre_attn_scalar=head_dim, max_position_embeddings=int(meta("context_length")),
        rms_norm_eps=float(meta("attention.layer_norm_rms_epsilon")),
        sliding_window=int(meta("attention.sliding_window")), layer_types=layer_types,
        rope_parameters=rope, hidden_activation="gelu_pytorch_tanh", final_logit_softcapping=None,
        attn_logit_softcapping=None, tie_word_embeddings=True,
        bos_token_id=int(_field(reader, "tokenizer.ggml.bos_token_id")),
        eos_token_id=int(_field(reader, "tokenizer.ggml.eos_token_id")),
        pad_token_id=int(_field(reader, "tokenizer.ggml.padding_token_id", 0)),
        architectures=["Gemma3ForCausalLM"])


def gemma3_state_dict(reader) -> dict[str, torch.Tensor]:
    """Every tensor of the GGUF file, dequantized to fp32, under its Hugging Face name."""
    from gguf.quants import dequantize

    state = {}
    for tensor in reader.tensors:
        name = hf_name(tensor.name)
        array = dequantize(tensor.data, tensor.tensor_type).astype("float32", copy=False)
        values = torch.from_numpy(array if array.flags.writeable else array.copy())  # F32: a file view
        if name.endswith("norm.weight"):
            values = values - 1.0  # stored as 1 + w
        state[name] = values
    return state


def load_gemma3_gguf(path: Path):
    """(Gemma3ForCausalLM in fp32, eval mode) from a Gemma-3 GGUF file."""
    import gguf
    from transformers import Gemma3ForCausalLM
    from transformers.initialization import no_init_weights

    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as exc:
        raise CircuitsError(f"cannot read the GGUF file {path} ({type(exc).__name__})") from None
    config = gemma3_config(reader)
    state = gemma3_state_dict(reader)
    with no_init_weights():  # the weights come from the file: skip the random initialisation
        model = Gemma3ForCausalLM(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)  # no copies
    del state
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embeddings
    if missing or unexpected:
        raise CircuitsError(f"the GGUF file {path} does not fit Gemma-3 "
                            f"(missing {missing[:2]}, unexpected {unexpected[:2]})")
    model.tie_weights()
    return model.float().eval()
