"""One model pass over a corpus, kept on disk for every later training run of a sweep.

    path = cache_activations(load_model("smollm2-135m"), cfg, tokens=60_000)   # the model runs once
    train_for_model(loaded, cfg.updated({"cache_dir": str(path), "lr": 1e-2}), "runs/a")  # reads the cache

The cache (transcoders.activation_cache: memory-mapped x.npy / y.npy, bfloat16 by default) is keyed by
what its rows depend on: the model's weights, the corpus, the hooks, the window length and the
storage dtype; by default it lives in $CIRCUITS_HOME/activations/<model>/<key>. A training run
given --cache-dir reuses it when it holds at least the rows it needs (`cache_matches`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from circuits.paths import circuits_home
from circuits.corpora.sequences import corpus_sequences
from circuits.training.train import ModelLayers, source_id_for
from transcoders.precision import resolve_activation_dtype
from transcoders.train_config import TrainConfig


def activation_cache_dir(loaded, cfg: TrainConfig, corpus_id: str) -> Path:
    """$CIRCUITS_HOME/activations/<model>/<key of source, hooks, seq_len, dtypes>."""
    arch = cfg.transcoder
    key = "|".join([source_id_for(loaded, corpus_id), arch.input_hook, arch.output_hook, str(cfg.seq_len),
                    resolve_activation_dtype(cfg.activation_dtype, loaded.model.cfg.device), cfg.cache_dtype])
    return circuits_home() / "activations" / loaded.name / hashlib.sha256(key.encode()).hexdigest()[:16]


def cache_activations(loaded, cfg: TrainConfig, tokens: int, corpus: str | None = None,
                      out: str | Path | None = None, progress: bool = True) -> Path:
    """Run `loaded`'s model over `tokens` training positions of the corpus once and store (x, y) at
    the config's hooks; returns the folder (an existing matching cache is kept, not rebuilt)."""
    from transcoders.activation_cache import build_activation_cache, cache_matches, check_room, collect_progress
    from transcoders.activation_source import ModelActivationSource

    sequences, corpus_id = corpus_sequences(loaded, corpus, cfg.seq_len)
    path = Path(out) if out is not None else activation_cache_dir(loaded, cfg, corpus_id)
    arch, source_id = cfg.transcoder, source_id_for(loaded, corpus_id)
    if cache_matches(path, source_id, arch.input_hook, arch.output_hook, tokens, cfg.seq_len, cfg.cache_dtype):
        return path
    reader = ModelLayers(loaded.model, cfg.activation_dtype)
    check_room(tokens, reader.n_layers, reader.d_model, 2 if cfg.cache_dtype == "bfloat16" else 4, path)
    live = ModelActivationSource(reader, sequences, arch.input_hook, arch.output_hook, cfg.seq_len, cfg.model_batch,
                                 cfg.group_tokens(reader.n_layers, reader.d_model))
    return build_activation_cache(live, tokens, path, source_id, dtype=cfg.cache_dtype,
                                  progress=collect_progress(progress, tokens), seq_len=cfg.seq_len)
