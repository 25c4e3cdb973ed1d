"""Real pretrained models as TransformerLens `HookedTransformer`s, loaded from local files.

TransformerLens's `from_pretrained` wants an official model name and fetches configs from the hub.
Here the HookedTransformerConfig is built from the checkpoint's own config.json (`hooked_config`),
the weights are converted by TransformerLens's converters
(`transformer_lens.pretrained.weight_conversions`) and loaded strictly. A hub id of one of these
architectures is downloaded into the local Hugging Face cache and then takes exactly the same path.

Processing (the same for every model the engine loads, see docs/models.md): none. No LayerNorm
folding, no centring of writing weights or of the unembedding, no value-bias folding: the weights
are the checkpoint's own, in float32 (or the `dtype` asked for: `--dtype bfloat16`). For every
layer l these hooks exist:
`blocks.{l}.ln1.hook_scale`, `blocks.{l}.ln2.hook_scale`, `ln_final.hook_scale` (the norm
denominators), `blocks.{l}.ln2.hook_normalized` (x / scale, *before* the norm's weight: the MLP's
input is hook_normalized * ln2.w [+ ln2.b]), `blocks.{l}.hook_mlp_out` (the MLP's output, equal to
the Hugging Face model's) and `blocks.{l}.attn.hook_pattern` ([batch, n_heads, query, key], also
for grouped-query attention).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from circuits.errors import CircuitsError
from circuits.models.finish import finish_model

# HookedTransformer.load_and_process_state_dict flags; all off, for every model (see module doc).
PROCESSING = {"fold_ln": False, "center_writing_weights": False, "center_unembed": False,
              "fold_value_biases": False, "refactor_factored_attn_matrices": False}

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class Architecture:
    """How one Hugging Face architecture maps onto TransformerLens."""

    config: Callable[[Any], dict]  # HF config -> HookedTransformerConfig fields
    converter: str  # name of the function in transformer_lens.pretrained.weight_conversions


def _rope_fields(hf) -> dict:
    """Rotary base and (Llama-3 style) frequency scaling from an HF config, transformers 4 or 5."""
    params = dict(getattr(hf, "rope_parameters", None) or getattr(hf, "rope_scaling", None) or {})
    base = params.get("rope_theta", getattr(hf, "rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    fields = {"rotary_base": float(base)}
    if kind == "llama3":
        fields.update(use_NTK_by_parts_rope=True, NTK_by_parts_factor=float(params["factor"]),
                      NTK_by_parts_low_freq_factor=float(params["low_freq_factor"]),
                      NTK_by_parts_high_freq_factor=float(params["high_freq_factor"]),
                      NTK_original_ctx_len=int(params["original_max_position_embeddings"]))
    elif kind != "default":
        raise CircuitsError(f"rotary scaling '{kind}' is not supported (only default and llama3)")
    return fields


def _head_dim(hf) -> int:
    head_dim = getattr(hf, "head_dim", None)
    return head_dim if head_dim else hf.hidden_size // hf.num_attention_heads


def _llama_family(hf, always_gqa: bool = False) -> dict:
    """Llama-like decoders: RMSNorm, rotary, SiLU-gated MLP, grouped-query attention."""
    if getattr(hf, "attention_bias", False) or getattr(hf, "mlp_bias", False):
        raise CircuitsError("Llama checkpoints with attention or MLP biases are not supported")
    n_kv = hf.num_key_value_heads or hf.num_attention_heads
    gqa = always_gqa or n_kv != hf.num_attention_heads
    return {
        "d_model": hf.hidden_size, "n_heads": hf.num_attention_heads, "d_head": _head_dim(hf),
        "n_key_value_heads": n_kv if gqa else None, "d_mlp": hf.intermediate_size,
        "n_layers": hf.num_hidden_layers, "n_ctx": hf.max_position_embeddings,
        "d_vocab": hf.vocab_size, "eps": hf.rms_norm_eps, "act_fn": hf.hidden_act,
        "normalization_type": "RMS", "final_rms": True, "gated_mlp": True,
        "positional_embedding_type": "rotary", "rotary_dim": _head_dim(hf),
        "rotary_adjacent_pairs": False, **_rope_fields(hf),
    }


def _attention_windows(hf) -> dict:
    """Sliding-window attention: TransformerLens's local attention, layer by layer (HF `layer_types`;
    Mistral: every layer). A key is visible when query - window < key <= query, as in both."""
    window = getattr(hf, "sliding_window", None)
    if window is None or getattr(hf, "use_sliding_window", True) is False:
        return {}
    kinds = getattr(hf, "layer_types", None) or ["sliding_attention"] * hf.num_hidden_layers
    attn_types = ["local" if kind == "sliding_attention" else "global" for kind in kinds]
    if "local" not in attn_types:
        return {}
    return {"use_local_attn": True, "window_size": int(window), "attn_types": attn_types}


def _mistral(hf) -> dict:
    return {**_llama_family(hf, always_gqa=True), **_attention_windows(hf)}


def _qwen2(hf) -> dict:
    return {**_llama_family(hf, always_gqa=True), **_attention_windows(hf)}


def _qwen3(hf) -> dict:
    return {**_llama_family(hf), "use_qk_norm": True, **_attention_windows(hf)}


def _soft_cap(value) -> float:
    return float(value) if value else -1.0  # TransformerLens: -1 means no soft-capping


def _gemma_rope(hf) -> dict:
    """Gemma-3 gives a rope base per attention kind (transformers 5: rope_parameters by layer type;
    it also reads transformers 4's rope_scaling + rope_local_base_freq into that form). Gemma-3 4B+
    scale the global layers' positions linearly (factor 8: frequencies / 8), the sliding layers not:
    TransformerLens's `rotary_scaling_factor` does exactly that (global layers only)."""
    params = dict(getattr(hf, "rope_parameters", None) or {})
    if "full_attention" not in params:
        return _rope_fields(hf)
    full, local = params["full_attention"], params.get("sliding_attention", params["full_attention"])
    fields = {"rotary_base": float(full["rope_theta"]), "rotary_base_local": float(local["rope_theta"])}
    if local.get("rope_type", "default") != "default":
        raise CircuitsError(f"rotary scaling '{local['rope_type']}' on Gemma-3's sliding layers is not supported")
    kind = full.get("rope_type", "default")
    if kind == "linear":
        fields["rotary_scaling_factor"] = float(full["factor"])
    elif kind != "default":
        raise CircuitsError(f"rotary scaling '{kind}' of Gemma-3 is not supported (only default and linear)")
    return fields


GEMMA_MAX_CTX = 8192  # rotary tables are [n_ctx, d_head] per layer: Gemma-3's 131072 would take GBs


def _gemma(hf, qk_norm: bool) -> dict:
    """Gemma-2 / Gemma-3: RMSNorm (1 + w, folded by the converter) before and after attention and
    MLP, GeGLU, embeddings scaled by sqrt(d_model) (folded into W_E by the converter), attention
    scale 1/sqrt(query_pre_attn_scalar), soft-capped attention scores and final logits,
    alternating sliding-window / global layers; Gemma-3 adds q/k norms and a local rope base."""
    return {
        "d_model": hf.hidden_size, "n_heads": hf.num_attention_heads, "d_head": hf.head_dim,
        "n_key_value_heads": hf.num_key_value_heads, "d_mlp": hf.intermediate_size,
        "n_layers": hf.num_hidden_layers, "n_ctx": min(hf.max_position_embeddings, GEMMA_MAX_CTX),
        "d_vocab": hf.vocab_size, "eps": hf.rms_norm_eps, "act_fn": hf.hidden_activation,
        "normalization_type": "RMS", "final_rms": True, "gated_mlp": True,
        "use_normalization_before_and_after": True, "positional_embedding_type": "rotary",
        "rotary_dim": hf.head_dim, "rotary_adjacent_pairs": False,
        "use_attn_scale": True, "attn_scale": float(hf.query_pre_attn_scalar) ** 0.5,
        "attn_scores_soft_cap": _soft_cap(getattr(hf, "attn_logit_softcapping", None)),
        "output_logits_soft_cap": _soft_cap(getattr(hf, "final_logit_softcapping", None)),
        "use_qk_norm": qk_norm, **_gemma_rope(hf), **_attention_windows(hf),
    }


def _gpt2(hf) -> dict:
    return {
        "d_model": hf.n_embd, "n_heads": hf.n_head, "d_head": hf.n_embd // hf.n_head,
        "d_mlp": hf.n_inner or 4 * hf.n_embd, "n_layers": hf.n_layer, "n_ctx": hf.n_positions,
        "d_vocab": hf.vocab_size, "eps": hf.layer_norm_epsilon, "act_fn": hf.activation_function,
        "use_attn_scale": getattr(hf, "scale_attn_weights", True),
        "scale_attn_by_inverse_layer_idx": getattr(hf, "scale_attn_by_inverse_layer_idx", False),
        "normalization_type": "LN", "positional_embedding_type": "standard",
    }


ARCHITECTURES: dict[str, Architecture] = {
    "LlamaForCausalLM": Architecture(_llama_family, "convert_llama_weights"),
    "MistralForCausalLM": Architecture(_mistral, "convert_mistral_weights"),
    "Qwen2ForCausalLM": Architecture(_qwen2, "convert_qwen2_weights"),
    "Qwen3ForCausalLM": Architecture(_qwen3, "convert_qwen3_weights"),
    "GPT2LMHeadModel": Architecture(_gpt2, "convert_gpt2_weights"),
    "Gemma2ForCausalLM": Architecture(lambda hf: _gemma(hf, qk_norm=False), "convert_gemma_weights"),
    "Gemma3ForCausalLM": Architecture(lambda hf: _gemma(hf, qk_norm=True), "convert_gemma_weights"),
    # Gemma-3 4B+ checkpoints are multimodal: only the language model is converted (the converter
    # skips the vision tower); images are not supported
    "Gemma3ForConditionalGeneration": Architecture(lambda hf: _gemma(hf.get_text_config(), qk_norm=True),
                                                   "convert_gemma_weights"),
}


MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
               "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "gpt2": "GPT2LMHeadModel",
               "gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM",
               "gemma3": "Gemma3ForConditionalGeneration"}


def architecture_name(config: dict) -> str | None:
    """The architecture a config.json names (its `architectures`, else its `model_type`)."""
    names = config.get("architectures") or []
    return names[0] if names else MODEL_TYPES.get(config.get("model_type"), config.get("model_type"))


def _architecture(name: str | None, where: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise CircuitsError(f"unsupported architecture '{name}' in {where} "
                            f"(supported: {', '.join(ARCHITECTURES)})")
    return ARCHITECTURES[name]


def hooked_config(hf_config, arch_name: str | None = None, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32):
    """The HookedTransformerConfig for a Hugging Face config object.

    `arch_name` defaults to the config's first `architectures` entry."""
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.utilities.activation_functions import SUPPORTED_ACTIVATIONS

    arch_name = arch_name or (getattr(hf_config, "architectures", None) or [None])[0]
    fields = _architecture(arch_name, "the model's config").config(hf_config)
    if fields["act_fn"] not in SUPPORTED_ACTIVATIONS:
        raise CircuitsError(f"activation '{fields['act_fn']}' of {arch_name} is not supported")
    model_name = getattr(hf_config, "name_or_path", "") or arch_name
    return HookedTransformerConfig(**fields, original_architecture=arch_name, model_name=model_name,
                                   tokenizer_name=None, init_weights=False, dtype=dtype,
                                   device=str(device))


def convert_hf_model(hf_model, tokenizer, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                     release_hf: bool = False):
    """A HookedTransformer with the weights of a loaded Hugging Face causal LM (unprocessed), in
    `dtype`. For float32 the conversion runs in float32; otherwise in the dtype the HF model was
    loaded in; each converted tensor is then cast once to `dtype`. `release_hf`: free the HF
    model's weights (moved to the meta device) once converted, so the HookedTransformer is built
    next to one copy of the weights instead of two."""
    import warnings

    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import fill_missing_keys
    from transformer_lens.pretrained import weight_conversions

    cfg = hooked_config(hf_model.config, type(hf_model).__name__, device, dtype)
    convert = getattr(weight_conversions, ARCHITECTURES[cfg.original_architecture].converter)
    # float32 asked: convert in float32 (e.g. Gemma's 1 + w); otherwise in the dtype the HF model has
    hf_model = hf_model.to("cpu", torch.float32) if dtype == torch.float32 else hf_model.to("cpu")
    with torch.no_grad():
        state = {k: v.detach().to(dtype).clone() for k, v in convert(hf_model, cfg).items()}
    if release_hf:
        hf_model.to("meta")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # HookedTransformer's deprecation notice (TransformerLens 4)
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
        model.load_state_dict(fill_missing_keys(model, state), strict=True)
    return finish_model(model, device)


def convert_with_cache_tokenizer(hf_model, hf_tokenizer, scratch: Path, name: str):
    """(HookedTransformer, tokenizer.json text, special tokens) for a dequantized model: the model
    gets its tokenizer exactly as the model cache will load it back (written through `scratch`)."""
    from circuits.models.cache import TOKENIZER_FILE, load_tokenizer

    tokenizer_json, special = tokenizer_files(hf_tokenizer)
    (scratch / TOKENIZER_FILE).write_text(tokenizer_json)
    tokenizer = load_tokenizer(scratch / TOKENIZER_FILE, special)
    model = convert_hf_model(hf_model, tokenizer, "cpu")
    model.cfg.model_name = name
    return model, tokenizer_json, special


@contextmanager
def quiet_transformers():
    """Silence transformers' info logs and its per-load progress bars (ours show instead)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def tokenizer_files(tokenizer) -> tuple[str, dict]:
    """(tokenizer.json text, special tokens) that `circuits.models.cache.load_tokenizer` turns back
    into an equivalent tokenizer: it prepends BOS itself when the model has one."""
    special = {key: value for key, value in tokenizer.special_tokens_map.items()
               if key in ("bos_token", "eos_token", "unk_token", "pad_token") and isinstance(value, str)}
    special["add_bos_token"] = "bos_token" in special
    return tokenizer.backend_tokenizer.to_str(), special


def _read_hf_config(path: Path) -> dict:
    if not path.is_dir():
        raise CircuitsError(f"{path} is not a directory")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CircuitsError(f"{path} has no config.json: not a Hugging Face checkpoint directory")
    try:
        return json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CircuitsError(f"cannot read {config_file}: {exc}") from None


def load_hf_checkpoint(path: Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load a local Hugging Face checkpoint directory (config.json, weights, tokenizer files), its
    weights in `dtype` (transformers reads them in that dtype: no float32 copy of a bf16 model)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path).expanduser()
    raw = _read_hf_config(path)
    _architecture(architecture_name(raw), f"{path}/config.json")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise CircuitsError(f"{path} has no weights (model.safetensors or pytorch_model.bin)")
    with quiet_transformers():
        try:
            # add_bos_token=True: the tokenizer itself prepends BOS (TransformerLens would otherwise
            # reload it by name to get that, which fails offline)
            tokenizer = AutoTokenizer.from_pretrained(path, add_bos_token=True, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure here means: no usable tokenizer
            raise CircuitsError(f"{path} has no usable tokenizer files ({type(exc).__name__})") from None
        try:
            hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - corrupted or incomplete files
            first_line = (str(exc).splitlines() or [""])[0][:200]
            raise CircuitsError(f"cannot load the checkpoint in {path} "
                                f"({type(exc).__name__}: {first_line})") from None
        model = convert_hf_model(hf_model, tokenizer, device, dtype, release_hf=True)
    model.cfg.model_name = path.name
    return model


HUB_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer*",
             "vocab.json", "merges.txt", "special_tokens_map.json", "generation_config.json"]


def load_hub_model(hf_id: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """A Hugging Face hub model (needs the hub, or its files already in the local HF cache).

    Architectures in ARCHITECTURES are downloaded (safetensors only) and loaded exactly like a
    local checkpoint; other ids that TransformerLens knows go through its `from_pretrained` with
    the same processing choices."""
    from huggingface_hub import hf_hub_download, snapshot_download

    def fetch(offline: bool):
        config = json.loads(Path(hf_hub_download(hf_id, "config.json", local_files_only=offline)).read_text())
        arch = architecture_name(config)
        if arch not in ARCHITECTURES:
            return arch, None
        return arch, snapshot_download(hf_id, allow_patterns=HUB_FILES, local_files_only=offline)

    try:
        arch, local = fetch(offline=True)  # already in the local Hugging Face cache
    except Exception:  # noqa: BLE001 - not cached: go to the hub
        if not _hub_reachable():
            raise CircuitsError(f"cannot reach the Hugging Face hub to fetch '{hf_id}' (offline?): "
                                "download the checkpoint elsewhere and pass its local directory") from None
        try:
            arch, local = fetch(offline=False)
        except Exception as exc:  # noqa: BLE001 - unknown id, gated repo, network ...
            raise CircuitsError(f"cannot fetch '{hf_id}' from the Hugging Face hub "
                                f"({type(exc).__name__})") from None
    if local is not None:
        return load_hf_checkpoint(Path(local), device, dtype)
    return _transformer_lens_from_pretrained(hf_id, arch, device, dtype)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check, so an offline machine gets its error at once instead of after retries."""
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # only the proxy can tell
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _transformer_lens_from_pretrained(hf_id: str, arch: str | None, device, dtype: torch.dtype = torch.float32):
    import contextlib
    import sys
    import warnings

    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        get_official_model_name(hf_id)
    except ValueError:
        raise CircuitsError(f"unsupported architecture '{arch}' of '{hf_id}' (supported: "
                            f"{', '.join(ARCHITECTURES)}, or an id TransformerLens lists)") from None
    # from_pretrained prints "Loaded pretrained model ..." to stdout: keep stdout clean for --json
    with warnings.catch_warnings(), quiet_transformers(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        model = HookedTransformer.from_pretrained(hf_id, device=str(device), dtype=dtype,
                                                  **PROCESSING)
    return finish_model(model, device)
