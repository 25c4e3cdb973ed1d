"""Reading the published transcoder layouts as per-layer memory-mapped views (docs/transcoder_formats.md).

Every reader returns `LayerViews`, one per layer, in our orientation and the file's dtype:
  enc [F, d]  dec [F, n_out, d]  b_enc [F]  b_dec [d]  threshold [F] | None  skip [d, d] | None
with y_hat += x @ skip. Views are slices/transposes of mapped files: nothing is copied here.

Layouts (names as published):
  CLT directory           W_enc_{i}.safetensors: W_enc_{i} (F, d), b_enc_{i}, b_dec_{i}, [threshold_{i}], [W_skip_{i}]
                          W_dec_{i}.safetensors: W_dec_{i} (F, L-i, d)
  circuit-tracer PLT      layer_{i}.safetensors: W_enc (F, d), W_dec (F, d), b_enc, b_dec,
                          [activation_function.threshold], [W_skip (d, d), y += x @ W_skip.T], [k]
  GemmaScope params.npz   W_enc (d, F), W_dec (F, d), b_enc, b_dec, threshold
  GemmaScope-2            w_enc (d, F), w_dec (F, d) or, multi-layer CLT, (F, L, d); b_enc, b_dec, threshold,
                          [affine_skip_connection (d, d), y += x @ A]
  SAELens transcoder      cfg.json + sae_weights.safetensors: W_enc (d_in, F), W_dec (F, d_out), b_enc, b_dec,
                          [threshold], [W_skip (d_out, d_in), y += x @ W_skip.T]
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from transcoders.errors import TranscoderError
from transcoders.tensor_files import map_tensors


@dataclass
class LayerViews:
    enc: torch.Tensor  # [F, d]
    dec: torch.Tensor  # [F, n_out, d]
    b_enc: torch.Tensor  # [F]
    b_dec: torch.Tensor  # [d]
    threshold: torch.Tensor | None  # [F]
    skip: torch.Tensor | None  # [d, d], y += x @ skip
    files: tuple[Path, ...]  # the files the views map (released after encoding)
    k: int | None = None  # a TopK file's own k, if it stores one


def _pick(tensors: dict, path: Path, *keys: str, required: bool = True) -> torch.Tensor | None:
    present = [key for key in keys if key in tensors]
    if len(present) > 1:
        raise TranscoderError(f"{path} has both {' and '.join(repr(k) for k in present)}: "
                              "which one is meant is not clear")
    for key in keys:
        if key in tensors:
            return tensors[key]
    if required:
        raise TranscoderError(f"{path} has no tensor {' / '.join(repr(k) for k in keys)}: "
                              "not a transcoder file, or a layout this loader does not know")
    return None


def _shape_error(path: Path, key: str, t: torch.Tensor, want: str) -> TranscoderError:
    return TranscoderError(f"{path}: '{key}' has shape {tuple(t.shape)}, expected {want}: "
                           "the file does not belong to this transcoder")


def _vector(t: torch.Tensor, n: int, path: Path, key: str) -> torch.Tensor:
    if t.numel() != n:
        raise _shape_error(path, key, t, f"({n},)")
    return t.reshape(n)


def _matrix(t: torch.Tensor, rows: int, cols: int, path: Path, key: str, stored_transposed: bool) -> torch.Tensor:
    """A [rows, cols] view of a 2-d tensor stored as (rows, cols), or as (cols, rows) if stored_transposed."""
    want = (cols, rows) if stored_transposed else (rows, cols)
    if tuple(t.shape) != want:
        if rows != cols and tuple(t.shape) == want[::-1]:  # the other orientation, unambiguous
            return t if stored_transposed else t.T
        raise _shape_error(path, key, t, str(want))
    return t.T if stored_transposed else t


def read_layer_file(path: Path, layer: int, n_layers: int, kind: str, hint: str = "") -> LayerViews:
    """One layer of a per-layer file (circuit-tracer PLT, GemmaScope npz, GemmaScope-2, SAELens)."""
    t = map_tensors(path)
    gemma2 = "w_enc" in t
    # orientation of W_enc as published: (d, F) for GemmaScope / GemmaScope-2 / SAELens, (F, d) for circuit-tracer
    enc_dF = gemma2 or path.suffix == ".npz" or hint == "saelens"
    b_enc = _pick(t, path, "b_enc")
    b_dec = _pick(t, path, "b_dec")
    F, d = b_enc.numel(), b_dec.numel()
    enc = _matrix(_pick(t, path, "w_enc", "W_enc"), F, d, path, "W_enc", enc_dF)
    dec_raw = _pick(t, path, "w_dec", "W_dec")
    if dec_raw.dim() == 3:  # GemmaScope-2 multi-layer CLT: (F, L, d), this layer writes to layers >= its own
        if tuple(dec_raw.shape) != (F, n_layers, d):
            raise _shape_error(path, "w_dec", dec_raw, str((F, n_layers, d)))
        if kind != "clt":
            raise TranscoderError(f"{path} is a cross-layer checkpoint (w_dec {tuple(dec_raw.shape)}): "
                                  "set model_kind: cross_layer_transcoder in config.yaml")
        dec = dec_raw[:, layer:, :]
    else:
        dec = _matrix(dec_raw, F, d, path, "W_dec", False)[:, None, :]
        if kind == "clt":
            raise TranscoderError(f"{path} is a per-layer transcoder (W_dec {tuple(dec_raw.shape)}): "
                                  "set model_kind: transcoder_set in config.yaml")
    thr = _pick(t, path, "activation_function.threshold", "threshold", required=False)
    skip = None
    if "affine_skip_connection" in t and "W_skip" in t:
        raise TranscoderError(f"{path} has both 'affine_skip_connection' and 'W_skip': which one is meant is not clear")
    if "affine_skip_connection" in t:
        skip = _matrix(t["affine_skip_connection"], d, d, path, "affine_skip_connection", False)
    elif "W_skip" in t:
        skip = _matrix(t["W_skip"], d, d, path, "W_skip", False).T
    k = int(t["k"].reshape(-1)[0]) if "k" in t else None
    return LayerViews(enc, dec, _vector(b_enc, F, path, "b_enc"), _vector(b_dec, d, path, "b_dec"),
                      None if thr is None else _vector(thr, F, path, "threshold"), skip, (path,), k)


def numbered_files(d: Path, pattern: str) -> list[Path]:
    """d/<pattern with {i}> for i = 0..n-1, checking the numbering has no gap."""
    rx = re.compile(re.escape(pattern).replace(r"\{i\}", r"(\d+)"))
    idx = sorted(int(m.group(1)) for p in d.iterdir() if (m := rx.fullmatch(p.name)))
    if not idx:
        raise TranscoderError(f"{d} has no transcoder weight files ({pattern.replace('{i}', '*')})")
    if idx != list(range(len(idx))):
        missing = sorted(set(range(idx[-1] + 1)) - set(idx))
        raise TranscoderError(f"{d} lacks {pattern.replace('{i}', str(missing[0]))}: layer files must be "
                              f"numbered 0..{idx[-1]} without gaps (download the missing file)")
    return [d / pattern.replace("{i}", str(i)) for i in idx]


def read_clt_dir(d: Path) -> list[LayerViews]:
    """circuit-tracer CLT: W_enc_{i}.safetensors + W_dec_{i}.safetensors."""
    enc_files = numbered_files(d, "W_enc_{i}.safetensors")
    L = len(enc_files)
    if (d / f"W_dec_{L}.safetensors").exists():  # the last encoder file is missing, not a layer
        raise TranscoderError(f"{d} lacks W_enc_{L}.safetensors (W_dec_{L}.safetensors is there): "
                              "download the missing file")
    layers = []
    for i, pe in enumerate(enc_files):
        t = map_tensors(pe)
        b_enc, b_dec = _pick(t, pe, f"b_enc_{i}"), _pick(t, pe, f"b_dec_{i}")
        F, dm = b_enc.numel(), b_dec.numel()
        enc = _matrix(_pick(t, pe, f"W_enc_{i}"), F, dm, pe, f"W_enc_{i}", False)
        pd = d / f"W_dec_{i}.safetensors"
        dec = _pick(map_tensors(pd), pd, f"W_dec_{i}")
        if tuple(dec.shape) != (F, L - i, dm):
            raise _shape_error(pd, f"W_dec_{i}", dec, str((F, L - i, dm)))
        thr = t.get(f"threshold_{i}")
        skip = t.get(f"W_skip_{i}")
        layers.append(LayerViews(
            enc, dec, _vector(b_enc, F, pe, f"b_enc_{i}"), _vector(b_dec, dm, pe, f"b_dec_{i}"),
            None if thr is None else _vector(thr, F, pe, f"threshold_{i}"),
            None if skip is None else _matrix(skip, dm, dm, pe, f"W_skip_{i}", False), (pe, pd)))
    check_same_shape(layers, enc_files)
    return layers


def read_saelens_cfg(folder: Path) -> dict:
    try:
        cfg = json.loads((folder / "cfg.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TranscoderError(f"{folder / 'cfg.json'} is unreadable ({type(exc).__name__})") from None
    if not isinstance(cfg, dict) or "hook_name" not in cfg:
        raise TranscoderError(f"{folder / 'cfg.json'} is not a SAELens transcoder config (no hook_name)")
    return cfg


def saelens_layer(cfg: dict, where: Path) -> int:
    m = re.match(r"blocks\.(\d+)\.", str(cfg.get("hook_name", "")))
    if m:
        return int(m.group(1))
    if isinstance(cfg.get("hook_layer"), int):
        return int(cfg["hook_layer"])
    raise TranscoderError(f"{where / 'cfg.json'}: cannot tell the layer from hook_name {cfg.get('hook_name')!r}")


def check_same_shape(layers: list[LayerViews], files: list[Path]) -> None:
    F, d = layers[0].enc.shape
    for lv, p in zip(layers, files):
        if tuple(lv.enc.shape) != (F, d):
            raise TranscoderError(f"{p} has {lv.enc.shape[0]} features of width {lv.enc.shape[1]}, "
                                  f"the first layer {F} of width {d}: the files belong to different transcoders")
    if any((lv.threshold is None) != (layers[0].threshold is None) for lv in layers):
        raise TranscoderError(f"{files[0].parent}: some layer files have a threshold and others do not")
    if any((lv.skip is None) != (layers[0].skip is None) for lv in layers):
        raise TranscoderError(f"{files[0].parent}: some layer files have a skip term and others do not")
