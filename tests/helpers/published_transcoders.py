"""Small fixtures in each published transcoder layout (docs/transcoder_formats.md), written from one
reference `Transcoder`: the real file and tensor names, dtypes and orientations, shapes scaled down.

    write_layout(name, ref, folder) -> the path to pass as --transcoders
    make_hub_repo(cache, "owner/name", {relpath: bytes}) -> a huggingface_hub cache entry (offline use)

Layouts: clt (circuit-tracer CLT, bf16), plt (circuit-tracer layer_{i}, fp32, ReLU + skip),
gemmascope-npz (GemmaScope params.npz listed by hf:// refs into a second repo), gemmascope2-plt and
gemmascope2-clt (w_enc / w_dec / affine_skip_connection, mlp.hook_in / mlp.hook_out), topk
(crv-style TopK layer_{i} files, fp16, `activation: topk`), saelens (cfg.json + sae_weights.safetensors).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import save

REVISION = "0123456789abcdef0123456789abcdef01234567"
GEMMASCOPE_REPO = "google/gemma-scope-2b-pt-transcoders"


def _st(tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> bytes:
    return save({k: v.detach().to(dtype).contiguous() for k, v in tensors.items()})


def _npz(arrays: dict[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: v.detach().float().numpy() for k, v in arrays.items()})
    return buf.getvalue()


def _config(kind: str, in_hook: str, out_hook: str, **extra) -> bytes:
    cfg = {"model_kind": kind, "feature_input_hook": in_hook, "feature_output_hook": out_hook, **extra}
    return yaml.safe_dump(cfg, sort_keys=False).encode()


def _layer(ref, i: int) -> dict[str, torch.Tensor]:
    return {"enc": ref.W_enc[i], "dec": ref.W_dec[i], "b_enc": ref.b_enc[i], "b_dec": ref.b_dec[i],
            "thr": None if ref.threshold is None else ref.threshold[i],
            "skip": None if ref.W_skip is None else ref.W_skip[i]}


def layout_files(name: str, ref) -> dict[str, bytes]:
    """{relative path: bytes} of `ref` written in layout `name`."""
    L = ref.cfg.n_layers
    files: dict[str, bytes] = {}
    if name == "clt":
        for i in range(L):
            t = _layer(ref, i)
            enc = {f"W_enc_{i}": t["enc"], f"b_enc_{i}": t["b_enc"], f"b_dec_{i}": t["b_dec"], f"threshold_{i}": t["thr"]}
            files[f"W_enc_{i}.safetensors"] = _st(enc, torch.bfloat16)
            files[f"W_dec_{i}.safetensors"] = _st({f"W_dec_{i}": t["dec"]}, torch.bfloat16)
        files["config.yaml"] = _config("cross_layer_transcoder", "ln2.hook_normalized", "hook_mlp_out", scan="fixture/clt")
    elif name == "plt":  # ReLU (no threshold) with a skip term, circuit-tracer orientation x @ W_skip.T
        for i in range(L):
            t = _layer(ref, i)
            files[f"layer_{i}.safetensors"] = _st({"W_enc": t["enc"], "W_dec": t["dec"][:, 0], "b_enc": t["b_enc"],
                                                   "b_dec": t["b_dec"], "W_skip": t["skip"].T}, torch.float32)
        files["config.yaml"] = _config("transcoder_set", "hook_resid_mid", "hook_mlp_out", activation="relu")
    elif name == "topk":
        for i in range(L):
            t = _layer(ref, i)
            files[f"layer_{i}.safetensors"] = _st({"W_enc": t["enc"], "W_dec": t["dec"][:, 0], "b_enc": t["b_enc"],
                                                   "b_dec": t["b_dec"]}, torch.float16)
        files["config.yaml"] = _config("transcoder_set", "ln2.hook_normalized", "hook_mlp_out", activation="topk", k=4)
    elif name == "gemmascope-npz":  # the weights live in GemmaScope's repo, the config lists hf:// files
        uris = []
        for i in range(L):
            t = _layer(ref, i)
            rel = f"layer_{i}/width_16k/average_l0_{70 + i}/params.npz"
            files[f"@{GEMMASCOPE_REPO}/{rel}"] = _npz({"W_enc": t["enc"].T, "W_dec": t["dec"][:, 0],
                                                        "b_enc": t["b_enc"], "b_dec": t["b_dec"], "threshold": t["thr"]})
            uris.append(f"hf://{GEMMASCOPE_REPO}/{rel}")
        files["config.yaml"] = _config("transcoder_set", "ln2.hook_normalized", "hook_mlp_out", transcoders=uris,
                                       scan="gemma-2-2b-transcoders")
    elif name in ("gemmascope2-plt", "gemmascope2-clt"):
        clt = name.endswith("clt")
        listed = []
        for i in range(L):
            t = _layer(ref, i)
            if clt:  # a multi-layer checkpoint per source layer: w_dec (F, L, d), zeros below the layer
                w_dec = torch.zeros(t["dec"].shape[0], L, t["dec"].shape[2])
                w_dec[:, i:] = t["dec"]
            else:
                w_dec = t["dec"][:, 0]
            tensors = {"w_enc": t["enc"].T, "w_dec": w_dec, "b_enc": t["b_enc"], "b_dec": t["b_dec"], "threshold": t["thr"]}
            if t["skip"] is not None:
                tensors["affine_skip_connection"] = t["skip"]
            rel = f"{'clt' if clt else 'transcoder'}_all/layer_{i}_width_16k_l0_small/params.safetensors"
            files[rel] = _st(tensors, torch.float32)
            listed.append(rel)
        kind = "cross_layer_transcoder" if clt else "transcoder_set"
        files["config.yaml"] = _config(kind, "mlp.hook_in", "mlp.hook_out", transcoders=listed)
    elif name == "saelens":
        for i in range(L):
            t = _layer(ref, i)
            files[f"layer_{i}/sae_weights.safetensors"] = _st(
                {"W_enc": t["enc"].T, "W_dec": t["dec"][:, 0], "b_enc": t["b_enc"], "b_dec": t["b_dec"],
                 "threshold": t["thr"], "W_skip": t["skip"].T}, torch.float32)
            d, F = ref.cfg.d_model, ref.cfg.n_features
            files[f"layer_{i}/cfg.json"] = json.dumps({
                "architecture": "jumprelu_skip_transcoder", "d_in": d, "d_sae": F, "d_out": d,
                "hook_name": f"blocks.{i}.ln2.hook_normalized", "hook_name_out": f"blocks.{i}.hook_mlp_out",
                "dtype": "float32"}).encode()
    else:
        raise ValueError(name)
    return files


# what each layout stores, for building its reference: (kind, activation, skip)
LAYOUTS = {"clt": ("clt", "jumprelu", False), "plt": ("plt", "relu", True), "topk": ("plt", "topk", False),
           "gemmascope-npz": ("plt", "jumprelu", False), "gemmascope2-plt": ("plt", "jumprelu", True),
           "gemmascope2-clt": ("clt", "jumprelu", False), "saelens": ("plt", "jumprelu", True)}
DTYPES = {"clt": torch.bfloat16, "topk": torch.float16}


def write_layout(name: str, ref, folder: Path, hub_cache: Path | None = None) -> Path:
    """Write `ref` in layout `name` under `folder` (files for other repos go into `hub_cache`)."""
    folder.mkdir(parents=True, exist_ok=True)
    other: dict[str, dict[str, bytes]] = {}
    for rel, data in layout_files(name, ref).items():
        if rel.startswith("@"):
            owner, repo, path = rel[1:].split("/", 2)
            other.setdefault(f"{owner}/{repo}", {})[path] = data
            continue
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    for repo_id, repo_files in other.items():
        if hub_cache is None:
            raise ValueError(f"layout {name} needs a hub cache for {repo_id}")
        make_hub_repo(hub_cache, repo_id, repo_files)
    return folder


def make_hub_repo(cache: Path, repo_id: str, files: dict[str, bytes], revision: str = REVISION) -> Path:
    """A huggingface_hub cache entry: models--owner--name/{blobs,snapshots/<rev>,refs/main}."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    snap = root / "snapshots" / revision
    for rel, data in files.items():
        (snap / rel).parent.mkdir(parents=True, exist_ok=True)
        (snap / rel).write_bytes(data)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(revision)
    return snap


def reference_transcoder(layout: str, n_layers: int, d_model: int, n_features: int = 32, seed: int = 0):
    """A random Transcoder with what `layout` stores, its weights rounded to the layout's dtype."""
    from tests.circuits.attribution_checks import random_transcoder
    from transcoders.config import TranscoderConfig
    from transcoders.loading import materialise

    kind, act, skip = LAYOUTS[layout]
    base = random_transcoder(n_layers, d_model, kind, n_features=n_features, skip=skip, seed=seed)
    with torch.no_grad():
        base.b_enc.normal_(0, 0.1)
        base.b_dec.normal_(0, 0.1)
    cfg = TranscoderConfig(kind=kind, n_layers=n_layers, d_model=d_model, n_features=n_features,
                           activation=act, topk=4 if act == "topk" else None, skip=skip)
    dtype = DTYPES.get(layout, torch.float32)

    class _Views:  # per-layer views of `base`, rounded to the layout's dtype
        def __init__(self, i):
            r = lambda t: None if t is None else t.detach().to(dtype).float()  # noqa: E731
            self.enc, self.dec, self.b_enc, self.b_dec = r(base.W_enc[i]), r(base.W_dec[i]), r(base.b_enc[i]), r(base.b_dec[i])
            self.threshold = r(base.threshold[i]) if act == "jumprelu" else None
            self.skip = r(base.W_skip[i]) if skip else None

    return materialise(cfg, [_Views(i) for i in range(n_layers)])
