"""The model cache: plain files that any TransformerLens-based tool can load, written atomically.

Layout of $CIRCUITS_HOME/models/<name>/:
  config.json        HookedTransformerConfig fields (json-serialisable subset)
  model.safetensors  state dict in TransformerLens naming
  tokenizer.json     a `tokenizers` tokenizer
  meta.json          special tokens, corpus / eval metadata, build time, the weights' fingerprint
                     (written last)
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from circuits.errors import CircuitsError
from circuits.models.finish import finish_model
from circuits.paths import models_dir, writable_dir

if TYPE_CHECKING:  # torch is imported where a model is built or loaded: `models list` does without it
    import torch

CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, META_FILE = (
    "config.json", "model.safetensors", "tokenizer.json", "meta.json")


def model_cache_dir(name: str) -> Path:
    return models_dir() / name


def read_meta(cache: Path) -> dict:
    try:
        return json.loads((cache / META_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def file_fingerprint(path: Path) -> str:
    """Short sha256 of a weights file: a model's identity in the source ids of its transcoders."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def state_fingerprint(model) -> str:
    """Short hash of a model's parameters (for models with no weights file of ours)."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes()[:4096])
    return h.hexdigest()[:16]


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def config_to_dict(cfg) -> dict:
    """The json-serialisable fields of a HookedTransformerConfig (enough to rebuild it)."""
    out = {}
    for key, value in cfg.to_dict().items():
        if key in ("device", "n_devices", "dtype"):
            continue
        if _jsonable(value):
            out[key] = value
    return out


def save_model_files(out_dir: Path, model, tokenizer_json: str, meta: dict) -> None:
    """Write config, weights, tokenizer and meta for `model` (a HookedTransformer) into out_dir."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CONFIG_FILE).write_text(json.dumps(config_to_dict(model.cfg), indent=2))
    import torch

    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS_FILE))
    (out_dir / TOKENIZER_FILE).write_text(tokenizer_json)
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2))


_CACHE_FILES = {CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, META_FILE, "GEMMA_TERMS.txt"}


def _made_here(folder: Path) -> bool:
    """A cache folder this tool wrote (it has meta.json, or nothing but cache files): --force may
    replace it. Anything else under the cache's name is the user's and is left alone."""
    if not folder.is_dir():
        return False
    if (folder / META_FILE).is_file():
        return True
    return all(p.is_file() and p.name in _CACHE_FILES for p in folder.iterdir())


def build_into_cache(name: str, build: Callable[[Path, bool], dict], progress: bool = True,
                     force: bool = False) -> Path:
    """Run `build(tmp_dir, progress)` and move the result into the cache atomically."""
    final = model_cache_dir(name)
    if (final / META_FILE).exists() and not force:
        return final
    if final.exists() and not _made_here(final):
        raise CircuitsError(f"{final} holds files this tool did not write, so it will not replace them; "
                            "move them away or point CIRCUITS_HOME elsewhere")
    writable_dir(final.parent)
    tmp = final.parent / f".{name}.building"
    shutil.rmtree(tmp, ignore_errors=True)
    start = time.perf_counter()
    meta = build(tmp, progress)
    meta = {**meta, "name": name, "build_seconds": round(time.perf_counter() - start, 2)}
    if (tmp / WEIGHTS_FILE).is_file():
        meta["fingerprint"] = file_fingerprint(tmp / WEIGHTS_FILE)
        # the shapes its config implies, for cache_problem to check without building a model later
        config_bytes = (tmp / CONFIG_FILE).read_bytes()
        meta["shapes"] = {k: list(v) for k, v in _config_shapes(json.loads(config_bytes)).items()}
        meta["config_sha256"] = hashlib.sha256(config_bytes).hexdigest()
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
    old = final.parent / f".{name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_tokenizer(path: Path, special: dict):
    """A transformers fast tokenizer over our tokenizer.json (so TransformerLens can use it)."""
    from transformers import PreTrainedTokenizerFast

    # name_or_path must be set: TransformerLens 3.9's set_tokenizer reads it (KeyError otherwise), and
    # reloads the tokenizer from it unless `special` has add_bos_token=True (then it is kept as is).
    tok = PreTrainedTokenizerFast(tokenizer_file=str(path), name_or_path=str(path.parent), **special)
    return tok


def cache_problem(cache: Path) -> str | None:
    """What is wrong with a cached model folder, in a few words, or None if it looks whole: meta
    and config readable, every tensor of the weights file present with the shape its config
    implies (read from the safetensors header; compared with the shapes meta.json recorded at build
    time while config.json is unchanged, else with a model built on the meta device)."""
    meta = read_meta(cache)
    if not meta:
        return "meta.json unreadable"
    try:
        config_bytes = (cache / CONFIG_FILE).read_bytes()
        cfg_dict = json.loads(config_bytes)
        stored = _stored_shapes(cache / WEIGHTS_FILE)
        if meta.get("shapes") and meta.get("config_sha256") == hashlib.sha256(config_bytes).hexdigest():
            wanted = {k: tuple(v) for k, v in meta["shapes"].items()}  # recorded at build time
        else:
            wanted = _config_shapes(cfg_dict)
    except Exception as exc:  # noqa: BLE001 - any failure to read the files means the cache is damaged
        return f"unreadable files ({type(exc).__name__})"
    for key, shape in wanted.items():
        if key.endswith(("IGNORE", "mask")):
            continue
        if key not in stored:
            return f"weights file lacks {key}"
        if stored[key] != shape:
            return f"{key} has shape {list(stored[key])}, its config implies {list(shape)}"
    return None


def _stored_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors header (no tensor is read)."""
    from safetensors import safe_open

    with safe_open(str(weights), framework="numpy") as f:  # the header only: no torch needed
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def _config_shapes(cfg_dict: dict) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes a HookedTransformer config implies (built on the meta device: no
    weights are made, but transformer_lens is imported: seconds)."""
    import warnings

    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(**{**cfg_dict, "device": "meta"})
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        model = HookedTransformer(cfg, tokenizer=None, move_to_device=False)
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def load_cached_model(cache: Path, name: str, device: str | torch.device = "cpu",
                      dtype: torch.dtype | None = None):
    """Load a cached model directory (float32 files) into a HookedTransformer whose weights are in
    `dtype` (default float32); corrupted files give one clear line."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    rebuild = f"rebuild with: circuits models build {name} --force"

    def corrupted(why: str) -> CircuitsError:
        # the detailed diagnosis (which tensor, which shape) is only worked out once loading failed
        return CircuitsError(f"cached model '{name}' at {cache} is corrupted ({cache_problem(cache) or why}); {rebuild}")

    meta = read_meta(cache)
    if not meta:
        raise corrupted("meta.json unreadable")
    try:
        cfg_dict = json.loads((cache / CONFIG_FILE).read_text())
        # init_weights=False: the weights come from the file, so skip drawing random ones first
        cfg = HookedTransformerConfig(**{**cfg_dict, "device": str(device), "init_weights": False,
                                         **({"dtype": dtype} if dtype is not None else {})})
        state = load_file(str(cache / WEIGHTS_FILE))
        tokenizer = load_tokenizer(cache / TOKENIZER_FILE, meta.get("special_tokens", {}))
    except (OSError, json.JSONDecodeError, SafetensorError, TypeError, ValueError, Exception) as exc:
        raise corrupted(type(exc).__name__) from None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError:  # shapes: cache_problem checks them, this is the last guard
        missing, unexpected = ["shapes"], []
    missing = [k for k in missing if not k.endswith(("IGNORE", "mask"))]
    if missing or unexpected:
        raise corrupted("weights do not match its config")
    return finish_model(model, device)
