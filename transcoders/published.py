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

from transcoders.agreement import required_hook, resolve_activation, resolve_skip
from transcoders.config import TranscoderConfig
from transcoders.errors import TranscoderError
from transcoders.formats import CONFIG_YAML, normalize_hook, read_config_file
from transcoders.formats_read import (LayerViews, check_same_shape, numbered_files, read_clt_dir,
                                      read_layer_file, read_saelens_cfg, saelens_layer)
from transcoders.hub import HubRef, download_file, download_folder, parse_hf_uri, parse_repo_ref

SAELENS_WEIGHTS = "sae_weights.safetensors"
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


def _declared_activation(config: dict, extras: dict, scan: str) -> tuple[dict, dict]:
    """({place: activation}, {place: k}) as config.yaml states them (transcoders/agreement.py)."""
    acts = {"activation": config.get("activation"), "circuits: activation": extras.get("activation")}
    ks = {"k": config.get("k"), "topk": config.get("topk"), "circuits: topk": extras.get("topk")}
    if str(extras.get("activation")) in ("jumprelu", "relu") and config.get("k") is None and config.get("topk") is None:
        # `transcoders train --topk K` without --activation topk wrote this before it was refused; it
        # never had an effect (the one documented exception to "k only with TopK")
        ks.pop("circuits: topk")
    if all(v is None for v in ks.values()) and scan in KNOWN_K and \
            str(config.get("activation", "")).lower().replace("-", "_") in ("topk", "batchtopk", "batch_topk", "top_k"):
        ks[f"circuit-tracer's k of {scan}"] = KNOWN_K[scan]
    return acts, ks


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


def _no_other_layout(base: Path, other: str, model_kind: str, cfg_path: Path) -> None:
    """A folder holding both layouts' files: model_kind would silently pick one of them."""
    if (base / other).exists():
        raise TranscoderError(f"{cfg_path}: model_kind {model_kind} but {base} also holds {other} (the other "
                              "layout's files): keep one transcoder per folder")


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
        _no_other_layout(base, "layer_0.safetensors", config["model_kind"], cfg_path)
        layers = read_clt_dir(base)
    else:
        if ref is not None:
            base = download_folder(ref, ["layer_*.safetensors"])
        _no_other_layout(base, "W_enc_0.safetensors", config["model_kind"], cfg_path)
        paths = numbered_files(base, "layer_{i}.safetensors")
        layers = [read_layer_file(p, i, len(paths), kind) for i, p in enumerate(paths)]
        check_same_shape(layers, paths)
    where = str(cfg_path)
    extras = config.get("circuits") or {}
    if not isinstance(extras, dict):
        raise TranscoderError(f"{where}: `circuits:` must be a mapping (activation, topk, skip, jumprelu_bandwidth)")
    acts, ks = _declared_activation(config, extras, scan)
    act, k = resolve_activation(acts, ks, layers, where)
    skip = resolve_skip({"skip": config.get("skip"), "circuits: skip": extras.get("skip")}, layers, where)
    in_hook = required_hook(config.get("feature_input_hook"), "feature_input_hook", True, where)
    out_hook = required_hook(config.get("feature_output_hook"), "feature_output_hook", False, where)
    F, d = layers[0].enc.shape
    cfg = _config(
        where, kind=kind, n_layers=len(layers), d_model=d, n_features=F, activation=act, topk=k, skip=skip,
        jumprelu_bandwidth=extras.get("jumprelu_bandwidth") or 0.1,
        input_hook=normalize_hook(in_hook), output_hook=normalize_hook(out_hook))
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
    for l in range(L):
        _check_saelens_layer(by_layer[l][0], by_layer[l][1], first, layers[l])
    where = str(by_layer[0][0] / "cfg.json")
    declared = "jumprelu" if "jumprelu" in arch else "topk" if "topk" in arch else "relu"
    act, k = resolve_activation({"architecture": declared}, {"k": first.get("k")}, layers, where)
    skip = resolve_skip({"architecture": "skip" in arch}, layers, where)
    out_hook = required_hook(first.get("hook_name_out"), "hook_name_out", False, where)
    F, dm = layers[0].enc.shape
    cfg = _config(where, kind="plt", n_layers=L, d_model=dm, n_features=F, activation=act, topk=k, skip=skip,
                  input_hook=normalize_hook(first["hook_name"]), output_hook=normalize_hook(out_hook))
    return Published(cfg, layers, str(d), str(first.get("neuronpedia_id") or d.name))


def _check_saelens_layer(folder: Path, cfg: dict, first: dict, lv: LayerViews) -> None:
    """One layer's cfg.json agrees with the first layer's and with its own tensors."""
    where = folder / "cfg.json"
    for key in ("architecture", "k"):
        if cfg.get(key) != first.get(key):
            raise TranscoderError(f"{where}: {key} {cfg.get(key)!r} differs from layer 0's {first.get(key)!r}: "
                                  "the folders belong to different transcoders")
    for key in ("hook_name", "hook_name_out"):
        if normalize_hook(str(cfg.get(key))) != normalize_hook(str(first.get(key))):
            raise TranscoderError(f"{where}: {key} {cfg.get(key)!r} is not layer 0's hook "
                                  f"({first.get(key)!r}) in another block")
    F, d = lv.enc.shape
    for key, n in (("d_in", d), ("d_sae", F), ("d_out", lv.b_dec.numel())):
        if key in cfg and cfg[key] != n:
            raise TranscoderError(f"{where}: {key} is {cfg[key]!r} but {folder / SAELENS_WEIGHTS} has {n}")


def _config(where: str, **fields) -> TranscoderConfig:
    from pydantic import ValidationError

    try:
        return TranscoderConfig(**fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise TranscoderError(f"{where}: {'.'.join(map(str, err['loc'])) or 'config'}: {err['msg']}") from None


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
