"""Train a transcoder for a loaded model: picks the corpus, identifies the data source, runs the
trainer (transcoders.trainer) and scores the result on held-out text (circuits.fidelity).

    result = train_for_model(load_model("world"), TrainConfig(n_features=512), "out/")
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from transcoders.errors import TranscoderError
from transcoders.train_config import TrainConfig

FIDELITY_TOKENS = 32768  # held-out tokens scored after training (at most; a tenth of the training tokens)


def model_fingerprint(loaded) -> str:
    """Short hash of the model's weights (its cached weights file when there is one)."""
    weights = Path(loaded.path) / "model.safetensors" if loaded.path else None
    h = hashlib.sha256()
    if weights is not None and weights.is_file():
        with weights.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    else:
        for name, p in sorted(loaded.model.state_dict().items()):
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes()[:4096])
    return h.hexdigest()[:16]


def source_id_for(loaded, corpus_id: str) -> str:
    return f"{loaded.name}:{model_fingerprint(loaded)}:{corpus_id}"


def train_for_model(loaded, cfg: TrainConfig, out_dir: str | Path, corpus: str | None = None, *,
                    resume: bool = False, overwrite: bool = False, progress: bool = True,
                    log_path: str | Path | None = None, device: str = "cpu", evaluate: bool = True,
                    stop_at_step: int | None = None):
    """Returns transcoders.trainer.TrainResult; metrics.json gets the held-out fidelity report."""
    from circuits.fidelity import measure_fidelity
    from circuits.transcoder_corpus import corpus_sequences
    from transcoders.trainer import train_transcoder

    model = loaded.model
    _check_hooks(model, cfg)
    sequences, corpus_id = corpus_sequences(loaded, corpus, cfg.seq_len)

    def final_eval(tc) -> dict:
        heldout, _ = corpus_sequences(loaded, corpus, cfg.seq_len, heldout=True)
        n_eval = min(FIDELITY_TOKENS, max(2048, cfg.tokens // 10))
        return measure_fidelity(model, tc, heldout, max_tokens=n_eval, seq_len=cfg.seq_len, progress=progress)

    return train_transcoder(model, sequences, cfg, out_dir, model_name=loaded.name,
                            source_id=source_id_for(loaded, corpus_id), resume=resume, overwrite=overwrite,
                            progress=progress, log_path=log_path, device=device, stop_at_step=stop_at_step,
                            final_eval=final_eval if evaluate else None)


def _check_hooks(model, cfg: TrainConfig) -> None:
    for hook in (cfg.input_hook, cfg.output_hook):
        if f"blocks.0.{hook}" not in model.hook_dict:
            raise TranscoderError(f"hook '{hook}' does not exist in the model (no blocks.0.{hook})")
