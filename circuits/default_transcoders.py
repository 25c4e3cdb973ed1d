"""The default CLT of each built-in model, trained on first use and cached.

    transcoder, path = default_transcoders(load_model("world"))

Cached under $CIRCUITS_HOME/transcoders/<model>/default-clt in the circuit-tracer format. It is
reused while the model's weights are unchanged (training_config.json records their hash); an
interrupted first-use training resumes from its checkpoint on the next call.
"""

from __future__ import annotations

from pathlib import Path

from circuits.errors import CircuitsError
from circuits.paths import transcoders_dir, writable_dir
from transcoders.train_config import TrainConfig

# Budget: `circuits trace` trains this on first use, on 2 CPU cores; measured figures in
# docs/transcoders.md. No skip term: on `world` a linear skip absorbs the fact lookups and the
# features stop carrying them (docs/case_studies.md). `world`'s middle MLPs do little work, so
# features there go dead unless revived: the pre-activation loss applies to the features silent for
# revive_after_tokens (a strong push on the dead ones; a weak one on all features raises L0 instead).
DEFAULT_TRAIN_CONFIGS: dict[str, dict] = {
    "world": dict(kind="clt", n_features=256, tokens=1_000_000, activation_tokens=200_000,
                  batch_size=1024, seq_len=32, buffer_tokens=32768, model_batch=1024, lr=6e-3,
                  sparsity_coef=0.1, preact_coef=1e-2, revive_after_tokens=5000, threshold_init=0.5,
                  jumprelu_bandwidth=0.5),
    "world-tiny": dict(kind="clt", n_features=128, tokens=100_000, activation_tokens=50_000,
                       batch_size=512, seq_len=32, buffer_tokens=16384, model_batch=512, lr=6e-3,
                       sparsity_coef=0.1, preact_coef=1e-2, revive_after_tokens=5000, threshold_init=0.5,
                       jumprelu_bandwidth=0.5),
}


def default_train_config(model_name: str) -> TrainConfig:
    if model_name not in DEFAULT_TRAIN_CONFIGS:
        known = ", ".join(DEFAULT_TRAIN_CONFIGS)
        raise CircuitsError(f"no default transcoder for model '{model_name}' (built-in defaults: {known}); "
                            "train one with `circuits transcoders train` and pass its directory")
    return TrainConfig(**DEFAULT_TRAIN_CONFIGS[model_name])


def default_transcoder_dir(model_name: str) -> Path:
    return transcoders_dir() / model_name / "default-clt"


def default_transcoders(loaded_model, progress: bool = True):
    """(Transcoder, Path) for a built-in model: the cached default CLT, trained here if needed."""
    from circuits.transcoder_fit import load_fitting_transcoder
    from circuits.transcoder_training import model_fingerprint, train_for_model
    from transcoders.checkpoint import CHECKPOINT_FILE, load_checkpoint
    from transcoders.formats import CONFIG_YAML, read_training_files

    cfg = default_train_config(loaded_model.name)
    path = default_transcoder_dir(loaded_model.name)
    device = str(loaded_model.model.cfg.device)
    fingerprint = model_fingerprint(loaded_model)
    if (path / CONFIG_YAML).exists():
        record = read_training_files(path)["training_config"]
        if _same_model(record.get("source_id"), fingerprint):
            return load_fitting_transcoder(loaded_model.model, path, device=device), path
    writable_dir(path.parent)
    resume = False
    if (path / CHECKPOINT_FILE).exists() and not (path / CONFIG_YAML).exists():
        try:
            _, meta = load_checkpoint(path / CHECKPOINT_FILE)
            saved = TrainConfig(**meta["train_config"])
            resume = _same_model(meta.get("source_id"), fingerprint) and saved.training_fields() == cfg.training_fields()
        except Exception:  # noqa: BLE001 - an unusable checkpoint just means a fresh start
            resume = False
    result = train_for_model(loaded_model, cfg, path, resume=resume, overwrite=not resume,
                             progress=progress, device=device)
    return result.transcoder.to(device), path


def _same_model(source_id: str | None, fingerprint: str) -> bool:
    return bool(source_id) and source_id.split(":")[1:2] == [fingerprint]
