"""What `--transcoders` accepts, resolved to a TranscoderConfig and per-layer mapped views.

Accepted (circuit-tracer's meaning): a local directory with config.yaml (CLT files, layer_{i} files,
or a `transcoders:` list of local paths / hf:// files), a path to a config.yaml, a hub repo id
`owner/repo[/subfolder][@revision]` (or circuit-tracer's shortcuts `gemma` / `llama`), and a local
directory of SAELens transcoders (one folder per layer with cfg.json + sae_weights.safetensors).
config.yaml keys read: model_kind, feature_input_hook, feature_output_hook, scan, transcoders,
activation (relu | jump_relu | topk | batchtopk), k, and our own extras under `circuits:`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transcoders.config import TranscoderConfig
from transcoders.errors import TranscoderError
from transcoders.formats import CONFIG_YAML, normalize_hook, read_config_file
from transcoders.formats_read import (LayerViews, check_same_shape, numbered_files, read_clt_dir,
                                      read_layer_file, read_saelens_cfg, saelens_layer)
from transcoders.hub import HubRef, download_file, download_folder, parse_hf_uri, parse_repo_ref

SAELENS_WEIGHTS = "sae_weights.safetensors"
_ACTIVATIONS = {"relu": "relu", "jump_relu": "jumprelu", "jumprelu": "jumprelu", "topk": "topk",
                "top_k": "topk", "batchtopk": "topk", "batch_topk": "topk"}
# circuit-tracer's own exception: this release's config.yaml says topk without k
KNOWN_K = {"facebook/crv-8b-instruct-transcoders": 128}


@dataclass
class Published:
    cfg: TranscoderConfig
    layers: list[LayerViews]
    source: str  # the config file (or folder) the transcoder was read from, for messages
    scan: str


def _locate(spec: str | Path) -> tuple[Path, HubRef | None]:
    """(local folder holding config.yaml or SAELens folders, hub ref if it came from the hub)."""
    p = Path(spec).expanduser()
    if p.is_dir():
        return p, None
    if p.is_file() and p.name.endswith((".yaml", ".yml")):
        return p, None
    ref = parse_repo_ref(str(spec)) if not p.exists() else None
    if ref is None:
        raise TranscoderError(f"transcoder directory {p} does not exist (nor is '{spec}' a hub repo id "
                              "owner/name[@revision])")
    return download_file(ref, CONFIG_YAML), ref


def _activation(config: dict, cfg_path: Path, layers: list[LayerViews], scan: str) -> tuple[str, int | None]:
    extras = config.get("circuits") or {}
    raw = config.get("activation") or extras.get("activation")
    if raw is None:
        act = "jumprelu" if layers[0].threshold is not None else "relu"
    else:
        act = _ACTIVATIONS.get(str(raw).lower().replace("-", "_"))
        if act is None:
            raise TranscoderError(f"{cfg_path}: activation '{raw}' is not one of relu, jump_relu, topk")
    k = None
    if act == "topk":
        k = config.get("k") or extras.get("topk") or layers[0].k or KNOWN_K.get(scan)
        if not isinstance(k, int) or k <= 0:
            raise TranscoderError(f"{cfg_path}: activation topk needs k (add `k: <features per token>` "
                                  "to config.yaml)")
    if act == "jumprelu" and layers[0].threshold is None:
        raise TranscoderError(f"{cfg_path}: activation jump_relu but the weight files have no threshold")
    return act, k


def _listed_files(config: dict, base: Path, ref: HubRef | None) -> list[Path]:
    entries = config["transcoders"]
    if all(isinstance(e, dict) for e in entries):  # circuit-tracer's first form: {id, layer, filepath}
        try:
            entries = [e["filepath"] for e in sorted(entries, key=lambda e: int(e.get("layer", 0)))]
        except (KeyError, TypeError, ValueError):
            raise TranscoderError(f"{base / CONFIG_YAML}: each `transcoders:` entry needs a filepath and a layer") from None
    paths = []
    for entry in entries:
        entry = str(entry)
        if entry.startswith("hf://"):
            paths.append(download_file(parse_hf_uri(entry)))
            continue
        p = Path(entry).expanduser()
        p = p if p.is_absolute() else base / p
        if not p.exists() and ref is not None and not Path(entry).is_absolute():
            p = download_file(ref, entry)
        paths.append(p)
    return paths


def _layer_file(p: Path) -> tuple[Path, str]:
    """A listed entry: a weights file, or a SAELens folder (cfg.json + sae_weights.safetensors)."""
    if p.is_dir() and (p / SAELENS_WEIGHTS).is_file():
        return p / SAELENS_WEIGHTS, "saelens"
    if p.name == SAELENS_WEIGHTS and (p.parent / "cfg.json").is_file():
        return p, "saelens"
    return p, ""


def _read_config_yaml(cfg_path: Path, ref: HubRef | None) -> Published:
    config = read_config_file(cfg_path)
    base = cfg_path.parent
    kind = "clt" if config["model_kind"] == "cross_layer_transcoder" else "plt"
    scan = str(config.get("scan") or (ref.label() if ref else base.name))
    if config.get("transcoders"):
        files = [_layer_file(p) for p in _listed_files(config, base, ref)]
        L = len(files)
        layers = [read_layer_file(p, i, L, kind, hint) for i, (p, hint) in enumerate(files)]
        check_same_shape(layers, [p for p, _ in files])
    elif kind == "clt":
        if ref is not None:
            base = download_folder(ref, ["*.safetensors"])
        layers = read_clt_dir(base)
    else:
        if ref is not None:
            base = download_folder(ref, ["layer_*.safetensors"])
        paths = numbered_files(base, "layer_{i}.safetensors")
        layers = [read_layer_file(p, i, len(paths), kind) for i, p in enumerate(paths)]
        check_same_shape(layers, paths)
    act, k = _activation(config, cfg_path, layers, scan)
    extras = config.get("circuits") or {}
    F, d = layers[0].enc.shape
    cfg = TranscoderConfig(
        kind=kind, n_layers=len(layers), d_model=d, n_features=F, activation=act, topk=k,
        skip=layers[0].skip is not None, jumprelu_bandwidth=extras.get("jumprelu_bandwidth") or 0.1,
        input_hook=normalize_hook(config.get("feature_input_hook", "hook_resid_mid")),
        output_hook=normalize_hook(config.get("feature_output_hook", "hook_mlp_out")))
    return Published(cfg, layers, str(cfg_path), scan)


def _read_saelens_dir(d: Path) -> Published:
    folders = sorted(p for p in d.iterdir() if p.is_dir() and (p / "cfg.json").is_file())
    if (d / "cfg.json").is_file():
        folders = [d]
    by_layer = {}
    for f in folders:
        cfg = read_saelens_cfg(f)
        by_layer[saelens_layer(cfg, f)] = (f, cfg)
    L = max(by_layer) + 1
    missing = sorted(set(range(L)) - set(by_layer))
    if missing:
        raise TranscoderError(f"{d}: no SAELens transcoder for layer {missing[0]} (each layer 0..{L - 1} needs "
                              "a folder with cfg.json and sae_weights.safetensors)")
    first = by_layer[0][1]
    arch = str(first.get("architecture", "transcoder")).lower()
    if "transcoder" not in arch:
        raise TranscoderError(f"{by_layer[0][0] / 'cfg.json'}: architecture '{arch}' is an SAE, not a transcoder")
    files = [by_layer[l][0] / SAELENS_WEIGHTS for l in range(L)]
    layers = [read_layer_file(p, l, L, "plt", "saelens") for l, p in enumerate(files)]
    check_same_shape(layers, files)
    act = "jumprelu" if "jumprelu" in arch else "topk" if "topk" in arch else "relu"
    k = first.get("k") if act == "topk" else None
    F, dm = layers[0].enc.shape
    cfg = TranscoderConfig(kind="plt", n_layers=L, d_model=dm, n_features=F, activation=act, topk=k,
                           skip=layers[0].skip is not None,
                           input_hook=normalize_hook(first["hook_name"]),
                           output_hook=normalize_hook(first.get("hook_name_out") or "hook_mlp_out"))
    return Published(cfg, layers, str(d), str(first.get("neuronpedia_id") or d.name))


def read_published(spec: str | Path) -> Published:
    """Resolve `spec` (see the module doc) and read its layout."""
    from transcoders.weights_check import check_dtypes

    where, ref = _locate(spec)
    if where.is_file():
        pub = _read_config_yaml(where, ref)
    elif (where / CONFIG_YAML).is_file():
        pub = _read_config_yaml(where / CONFIG_YAML, ref)
    elif (where / "cfg.json").is_file() or any((p / "cfg.json").is_file() for p in where.iterdir() if p.is_dir()):
        pub = _read_saelens_dir(where)
    else:
        pub = None
    if pub is not None:
        check_dtypes(pub.layers)  # integer weights would be cast silently: refuse them here
        return pub
    raise TranscoderError(f"{where} has no {CONFIG_YAML}: not a transcoder directory, or its write was interrupted")
