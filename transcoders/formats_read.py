"""Reading the safetensors of a circuit-tracer transcoder directory into stacked float32 tensors,
checking every shape (layout and orientation notes in formats.py).

Both readers return {"W_enc": [L, F, d], "b_enc": [L, F], "b_dec": [L, d], "W_dec": [[F, n_out, d]] * L,
optional "threshold": [L, F], optional "W_skip": [L, d, d] (our orientation: y += x @ W_skip[l])}.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from transcoders.errors import TranscoderError


def _read(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.exists():
        raise TranscoderError(f"missing transcoder file {path}")
    try:
        return {k: v.to(torch.float32) for k, v in load_file(str(path)).items()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise TranscoderError(f"transcoder file {path} is unreadable ({type(exc).__name__})") from None


def _get(tensors: dict, key: str, path: Path, shape: tuple[int, ...]) -> torch.Tensor:
    if key not in tensors:
        raise TranscoderError(f"{path.name} has no tensor '{key}'")
    t = tensors[key]
    if tuple(t.squeeze().shape) == tuple(s for s in shape if s != 1):  # e.g. a threshold stored as (1, F)
        t = t.reshape(shape)
    if tuple(t.shape) != shape:
        raise TranscoderError(f"{path.name}: '{key}' has shape {tuple(t.shape)}, expected {shape}")
    return t


def _n_layers(d: Path, pattern: str) -> int:
    idx = sorted(int(m.group(1)) for p in d.iterdir() if (m := re.fullmatch(pattern, p.name)))
    if not idx:
        raise TranscoderError(f"{d} has no transcoder weight files ({pattern.replace(chr(92), '')})")
    if idx != list(range(len(idx))):
        raise TranscoderError(f"{d}: layer files are not numbered 0..{len(idx) - 1}")
    return len(idx)


def read_clt_tensors(d: Path) -> dict:
    L = _n_layers(d, r"W_enc_(\d+)\.safetensors")
    first = _read(d / "W_enc_0.safetensors")
    if "W_enc_0" not in first or first["W_enc_0"].dim() != 2:
        raise TranscoderError("W_enc_0.safetensors has no 2-d tensor 'W_enc_0'")
    F, dm = first["W_enc_0"].shape
    has_thr, has_skip = "threshold_0" in first, "W_skip_0" in first
    out = {k: [] for k in ("W_enc", "b_enc", "b_dec", "W_dec", "threshold", "W_skip")}
    for i in range(L):
        p = d / f"W_enc_{i}.safetensors"
        enc = first if i == 0 else _read(p)
        out["W_enc"].append(_get(enc, f"W_enc_{i}", p, (F, dm)))
        out["b_enc"].append(_get(enc, f"b_enc_{i}", p, (F,)))
        out["b_dec"].append(_get(enc, f"b_dec_{i}", p, (dm,)))
        if has_thr:
            out["threshold"].append(_get(enc, f"threshold_{i}", p, (F,)))
        if has_skip:
            out["W_skip"].append(_get(enc, f"W_skip_{i}", p, (dm, dm)))
        pd = d / f"W_dec_{i}.safetensors"
        out["W_dec"].append(_get(_read(pd), f"W_dec_{i}", pd, (F, L - i, dm)))
    return _stack(out)


def read_plt_tensors(d: Path, config: dict) -> dict:
    paths = _plt_paths(d, config)
    first = _read(paths[0])
    if "W_enc" not in first or first["W_enc"].dim() != 2:
        raise TranscoderError(f"{paths[0].name} has no 2-d tensor 'W_enc'")
    F, dm = first["W_enc"].shape
    thr_key = "activation_function.threshold"
    has_thr, has_skip = thr_key in first, "W_skip" in first
    out = {k: [] for k in ("W_enc", "b_enc", "b_dec", "W_dec", "threshold", "W_skip")}
    for i, p in enumerate(paths):
        t = first if i == 0 else _read(p)
        out["W_enc"].append(_get(t, "W_enc", p, (F, dm)))
        out["b_enc"].append(_get(t, "b_enc", p, (F,)))
        out["b_dec"].append(_get(t, "b_dec", p, (dm,)))
        out["W_dec"].append(_get(t, "W_dec", p, (F, dm))[:, None, :])
        if has_thr:
            out["threshold"].append(_get(t, thr_key, p, (F,)))
        if has_skip:
            out["W_skip"].append(_get(t, "W_skip", p, (dm, dm)).T)
    return _stack(out)


def _plt_paths(d: Path, config: dict) -> list[Path]:
    listed = config.get("transcoders")
    if not listed:
        return [d / f"layer_{i}.safetensors" for i in range(_n_layers(d, r"layer_(\d+)\.safetensors"))]
    paths = []
    for entry in listed:
        entry = str(entry)
        if entry.startswith("hf://"):
            raise TranscoderError(f"config.yaml lists a Hugging Face file ({entry}): download the files "
                                  "and list local paths (or layer_{i}.safetensors) instead")
        p = Path(entry).expanduser()
        paths.append(p if p.is_absolute() else d / p)
    return paths


def _stack(out: dict) -> dict:
    res = {k: torch.stack(out[k]) for k in ("W_enc", "b_enc", "b_dec")}
    res["W_dec"] = out["W_dec"]
    if out["threshold"]:
        res["threshold"] = torch.stack(out["threshold"])
    if out["W_skip"]:
        res["W_skip"] = torch.stack(out["W_skip"])
    return res
