"""Train a transcoder for a loaded model: picks the corpus, identifies the data source, runs the
trainer (transcoders.trainer) and scores the result on held-out text (circuits.training.fidelity).

    result = train_for_model(load_model("world"), TrainConfig(transcoder=TranscoderArchitecture(n_features=512)), "out/")
"""

from __future__ import annotations

from pathlib import Path

from circuits.hooks import check_hooks_exist
from circuits.training.corpus import corpus_sequences
from circuits.training.fidelity import measure_fidelity
from transcoders.train_config import TrainConfig

FIDELITY_TOKENS = 32768  # held-out tokens scored after training (at most; a tenth of the training tokens)


def source_id_for(loaded, corpus_id: str) -> str:
    """'<model>:<weights fingerprint>:<corpus>': what the activations a transcoder learns come from."""
    return f"{loaded.name}:{loaded.fingerprint}:{corpus_id}"


def train_for_model(loaded, cfg: TrainConfig, out_dir: str | Path, corpus: str | None = None, *,
                    resume: bool = False, overwrite: bool = False, progress: bool = True,
                    log_path: str | Path | None = None, device: str = "cpu", evaluate: bool = True,
                    stop_at_step: int | None = None):
    """Returns transcoders.trainer.TrainResult; metrics.json gets the held-out fidelity report."""
    from transcoders.trainer import train_transcoder

    model = loaded.model
    check_hooks_exist(model, cfg.transcoder.input_hook, cfg.transcoder.output_hook, source="the training config's")
    sequences, corpus_id = corpus_sequences(loaded, corpus, cfg.seq_len)

    def final_eval(tc) -> dict:
        heldout, _ = corpus_sequences(loaded, corpus, cfg.seq_len, heldout=True)
        n_eval = min(FIDELITY_TOKENS, max(2048, cfg.tokens // 10))
        return measure_fidelity(model, tc, heldout, max_tokens=n_eval, seq_len=cfg.seq_len, progress=progress)

    return train_transcoder(model, sequences, cfg, out_dir, model_name=loaded.name,
                            source_id=source_id_for(loaded, corpus_id), resume=resume, overwrite=overwrite,
                            progress=progress, log_path=log_path, device=device, stop_at_step=stop_at_step,
                            final_eval=final_eval if evaluate else None)
