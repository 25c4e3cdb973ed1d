"""The circuit-tracer transcoder directory format (METHOD.md section 7), written and read.

  config.yaml                 model_kind: cross_layer_transcoder | transcoder_set, model_name,
                              feature_input_hook, feature_output_hook, scan; our extras under `circuits:`
  CLT  W_enc_{i}.safetensors  W_enc_i (F, d), b_enc_i (F), b_dec_i (d), [threshold_i (F)], [W_skip_i (d, d)]
       W_dec_{i}.safetensors  W_dec_i (F, L-i, d)
  PLT  layer_{i}.safetensors  W_enc (F, d), W_dec (F, d), b_enc (F), b_dec (d),
                              [activation_function.threshold (F)], [W_skip (d, d)]
Orientations follow circuit-tracer's loaders: a CLT adds x @ W_skip_i (as our W_skip[l]); a PLT file
adds x @ W_skip.T, so its W_skip is our W_skip[l] transposed. Files carry no threshold for ReLU.
Every file is written atomically and config.yaml last (removed first when overwriting), so a
directory whose write was interrupted has no config.yaml and does not load.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from transcoders.checkpoint import atomic_write_bytes
from transcoders.config import TranscoderConfig
from transcoders.errors import TranscoderError
from transcoders.transcoder import Transcoder

CONFIG_YAML = "config.yaml"
TRAINING_CONFIG_JSON = "training_config.json"
METRICS_JSON = "metrics.json"
_KINDS = {"clt": "cross_layer_transcoder", "plt": "transcoder_set"}


def normalize_hook(hook: str) -> str:
    """'blocks.{layer}.ln2.hook_normalized' / 'blocks.3.hook_mlp_out' -> per-block name."""
    return re.sub(r"^blocks\.(\{\w*\}|\d+)\.", "", hook.strip())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2) + "\n").encode())


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    data = save({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()})
    atomic_write_bytes(path, data)


def _layer_files(cfg: TranscoderConfig, tc: Transcoder) -> dict[str, dict[str, torch.Tensor]]:
    files = {}
    for i in range(cfg.n_layers):
        if cfg.kind == "clt":
            enc = {f"W_enc_{i}": tc.W_enc[i], f"b_enc_{i}": tc.b_enc[i], f"b_dec_{i}": tc.b_dec[i]}
            if tc.threshold is not None:
                enc[f"threshold_{i}"] = tc.threshold[i]
            if tc.W_skip is not None:
                enc[f"W_skip_{i}"] = tc.W_skip[i]
            files[f"W_enc_{i}.safetensors"] = enc
            files[f"W_dec_{i}.safetensors"] = {f"W_dec_{i}": tc.W_dec[i]}
        else:
            layer = {"W_enc": tc.W_enc[i], "W_dec": tc.W_dec[i][:, 0], "b_enc": tc.b_enc[i], "b_dec": tc.b_dec[i]}
            if tc.threshold is not None:
                layer["activation_function.threshold"] = tc.threshold[i]
            if tc.W_skip is not None:
                layer["W_skip"] = tc.W_skip[i].T
            files[f"layer_{i}.safetensors"] = layer
    return files


def save_transcoder(tc: Transcoder, out_dir: str | Path, model_name: str | None = None,
                    training_config: dict | None = None, metrics: dict | None = None) -> Path:
    """Write `tc` (raw, unnormalised units) as a circuit-tracer directory; returns the directory."""
    import yaml

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = tc.cfg
    (out / CONFIG_YAML).unlink(missing_ok=True)
    files = _layer_files(cfg, tc)
    with torch.no_grad():
        for name, tensors in files.items():
            _save_tensors(out / name, tensors)
    for stale in [*out.glob("W_enc_*.safetensors"), *out.glob("W_dec_*.safetensors"), *out.glob("layer_*.safetensors")]:
        if stale.name not in files:
            stale.unlink()
    if training_config is not None:
        write_json(out / TRAINING_CONFIG_JSON, training_config)
    if metrics is not None:
        write_json(out / METRICS_JSON, metrics)
    config = {
        "model_kind": _KINDS[cfg.kind], "model_name": model_name or "unknown",
        "feature_input_hook": cfg.input_hook, "feature_output_hook": cfg.output_hook,
        "scan": f"circuits/{model_name or 'unknown'}/{cfg.kind}-{cfg.n_features}",
        **({"activation": "topk", "k": cfg.topk} if cfg.activation == "topk" else {}),
        "circuits": {"activation": cfg.activation, "topk": cfg.topk,
                     "jumprelu_bandwidth": cfg.jumprelu_bandwidth},
    }
    atomic_write_bytes(out / CONFIG_YAML, yaml.safe_dump(config, sort_keys=False).encode())
    return out


def read_config_file(cfg_path: Path) -> dict:
    import yaml

    try:
        config = yaml.safe_load(cfg_path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        raise TranscoderError(f"{cfg_path} is not valid YAML ({type(exc).__name__})") from None
    if isinstance(config, dict) and "model_kind" not in config and config.get("transcoders"):
        config["model_kind"] = "transcoder_set"  # circuit-tracer's first configs listed per-layer files only
    if not isinstance(config, dict) or config.get("model_kind") not in _KINDS.values():
        raise TranscoderError(f"{cfg_path}: model_kind must be cross_layer_transcoder or transcoder_set")
    return config


def read_transcoder_config_yaml(path: str | Path) -> dict:
    d = Path(path)
    if not d.is_dir():
        raise TranscoderError(f"transcoder directory {d} does not exist")
    cfg_path = d / CONFIG_YAML
    if not cfg_path.exists():
        raise TranscoderError(f"{d} has no {CONFIG_YAML}: not a transcoder directory, or its write was interrupted")
    return read_config_file(cfg_path)


def read_training_files(path: str | Path) -> dict:
    """Our training config and metrics saved beside the transcoder (empty dicts if absent)."""
    out = {}
    for key, name in (("training_config", TRAINING_CONFIG_JSON), ("metrics", METRICS_JSON)):
        try:
            out[key] = json.loads((Path(path) / name).read_text())
        except (OSError, json.JSONDecodeError):
            out[key] = {}
    return out
