"""The default transcoder of each built-in model, trained on first use and cached.

    transcoder, path = ensure_default_transcoder(load_model("world"))

The configuration is the model's registry entry's (circuits.models.registry, `transcoder_config`).

Cached under $CIRCUITS_HOME/transcoders/<model>/default-<kind> (`default-clt` for `world`,
`default-plt` for `smollm2-135m`; `circuits transcoders train --model M` writes there too) in the circuit-tracer format. It is
reused while the model's weights are unchanged (training_config.json records their hash); an
interrupted first-use training resumes from its checkpoint on the next call.

One way makes it: `make_default_transcoder` trains into the default folder and then builds the
feature index (for models whose corpus is text). First use (`ensure_default_transcoder`, called by
ReplacementModel.load) and `circuits transcoders train --model M` without --out both go through it.
They differ only in how they treat a checkpoint made with other settings: first use, which took no
settings from the user, starts afresh; the CLI, whose options the user chose, refuses with one line.
"""

from __future__ import annotations

from pathlib import Path

from circuits.errors import CircuitsError
from circuits.features.index import index_corpus
from circuits.training.train import train_for_model
from circuits.replacement.hooks import freeze, load_fitting_transcoder
from circuits.models.registry import BUILTIN_MODELS, default_transcoder_fields
from circuits.paths import transcoders_dir, writable_dir
from transcoders.train_config import TrainConfig

# Tokens the default transcoder's feature index reads on first use: half `circuits features index`'s
# default, so the first graph comes sooner (docs/transcoders.md "First use"); every feature that
# fires once in 500 tokens still gets 30+ contexts. `circuits features index` rebuilds it larger.
DEFAULT_INDEX_TOKENS = 16_384


def default_train_config(model_name: str) -> TrainConfig:
    """The TrainConfig of a built-in model's default transcoder (its registry entry's)."""
    fields = default_transcoder_fields(model_name)
    if fields is None:
        known = ", ".join(n for n, m in BUILTIN_MODELS.items() if m.transcoder_config is not None)
        raise CircuitsError(f"no default transcoder for model '{model_name}' (built-in defaults: {known}); "
                            "train one with `circuits transcoders train` and pass its directory")
    return fields.model_copy(deep=True)


def default_transcoder_dir(model_name: str, kind: str | None = None) -> Path:
    """$CIRCUITS_HOME/transcoders/<model>/default-<kind> (kind: the default `trace` uses)."""
    kind = kind or default_train_config(model_name).transcoder.kind
    return transcoders_dir() / model_name / f"default-{kind}"


def cached_default_transcoder_dir(model_name: str) -> Path | None:
    """The built-in model's default transcoder directory when a finished one is in the cache, else None."""
    from transcoders.formats import CONFIG_YAML

    path = default_transcoder_dir(model_name)
    return path if (path / CONFIG_YAML).is_file() else None


def ensure_default_transcoder(loaded_model, progress: bool = True):
    """(Transcoder, Path) for a built-in model: its cached default transcoder, trained here if needed."""
    from transcoders.checkpoint import CHECKPOINT_FILE, load_checkpoint
    from transcoders.formats import CONFIG_YAML, read_training_files

    cfg = default_train_config(loaded_model.name)
    path = default_transcoder_dir(loaded_model.name)
    device = str(loaded_model.model.cfg.device)
    fingerprint = loaded_model.fingerprint
    if (path / CONFIG_YAML).exists():
        record = read_training_files(path)["training_config"]
        if _same_model(record.get("source_id"), fingerprint):
            return load_fitting_transcoder(loaded_model.model, path, device=device), path
    writable_dir(path.parent)
    resume = False
    if (path / CHECKPOINT_FILE).exists() and not (path / CONFIG_YAML).exists():
        try:
            _, meta = load_checkpoint(path / CHECKPOINT_FILE)
            saved = TrainConfig.from_flat(meta["train_config"])
            resume = _same_model(meta.get("source_id"), fingerprint) and saved.training_fields() == cfg.training_fields()
        except Exception:  # noqa: BLE001 - an unusable checkpoint just means a fresh start
            resume = False
    if progress:
        from circuits.models.registry import say_first_use

        builtin = BUILTIN_MODELS[loaded_model.name]
        longer = (f"; later, `circuits transcoders train --model {loaded_model.name} --recipe long --overwrite` "
                  "trains a better one in its place (under 30 CPU-minutes on 2 cores)") if "long" in builtin.recipes else ""
        say_first_use(f"{'resuming' if resume else 'training'} the default {cfg.transcoder.kind.upper()} of "
                      f"`{loaded_model.name}` ({builtin.first_use[1]}), cached in {path}{longer}")
    result = make_default_transcoder(loaded_model, cfg, path, resume=resume, overwrite=not resume,
                                     progress=progress, device=device)
    return freeze(result.transcoder.to(device)), path


def make_default_transcoder(loaded_model, cfg: TrainConfig, path: Path, *, resume: bool, overwrite: bool,
                            progress: bool, device: str, corpus: str | None = None, log_path: Path | None = None):
    """Train the default transcoder into `path`, then index its features over the model's text
    corpus (readable labels; `world`'s generated lines are not indexed by default). Returns the
    training result (circuits.training.train.TrainResult)."""
    result = train_for_model(loaded_model, cfg, path, corpus, resume=resume, overwrite=overwrite,
                             progress=progress, log_path=log_path, device=device)
    if BUILTIN_MODELS[loaded_model.name].text_corpus and corpus is None:
        index_corpus(loaded_model, freeze(result.transcoder.to(device)), path, max_tokens=DEFAULT_INDEX_TOKENS,
                     progress=progress)
    return result


def _same_model(source_id: str | None, fingerprint: str) -> bool:
    return bool(source_id) and source_id.split(":")[1:2] == [fingerprint]
