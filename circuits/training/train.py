"""Train a transcoder for a loaded model: picks the corpus, identifies the data source, runs the
trainer (transcoders.trainer) and scores the result on held-out text (circuits.training.fidelity).
The trainer reads the model through `ModelLayers`, i.e. through circuits.replacement.hooks.capture_layers, the
one place that hooks a model.

    result = train_for_model(load_model("world"), TrainConfig(transcoder=TranscoderArchitecture(n_features=512)), "out/")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from circuits.replacement.hooks import capture_layers, check_hooks_exist
from circuits.corpora.sequences import corpus_sequences
from circuits.training.fidelity import HeldOutReconstruction, measure_fidelity
from transcoders.precision import resolve_activation_dtype
from transcoders.train_config import TrainConfig

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

FIDELITY_TOKENS = 32768  # held-out tokens scored after training (at most; a tenth of the training tokens)
CURVE_TOKENS = 4096  # held-out positions of the periodic score (--eval-every-tokens; at most --eval-tokens)


@dataclass
class ModelLayers:
    """A HookedTransformer as the trainer reads it (a transcoders.activation_source.LayerReader)."""

    model: HookedTransformer
    dtype: str = "float32"  # "bfloat16": the forward pass runs under autocast (TrainConfig.activation_dtype)

    def __post_init__(self):
        self.dtype = resolve_activation_dtype(self.dtype, self.model.cfg.device)  # "auto": measured here

    @property
    def n_layers(self) -> int:
        return self.model.cfg.n_layers

    @property
    def d_model(self) -> int:
        return self.model.cfg.d_model

    def __call__(self, tokens_b_t: torch.Tensor, input_hook: str, output_hook: str) -> tuple[torch.Tensor, torch.Tensor]:
        """x_b_t_layer_d, y_b_t_layer_d [B, T, L, d] at every block's `input_hook` / `output_hook`."""
        device_type = torch.device(self.model.cfg.device).type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.dtype == "bfloat16"):
            cap = capture_layers(self.model, tokens_b_t, input_hook, output_hook, logits=False)
        return cap.x_b_t_layer_d, cap.y_b_t_layer_d


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
    check_hooks_exist(model, cfg.transcoder.input_hook, cfg.transcoder.output_hook, source="the training config",
                      settings=("--input-hook", "--output-hook"))
    sequences, corpus_id = corpus_sequences(loaded, corpus, cfg.seq_len)

    def final_eval(tc) -> dict:
        heldout, _ = corpus_sequences(loaded, corpus, cfg.seq_len, heldout=True)
        n_eval = cfg.eval_tokens if cfg.eval_tokens is not None else min(FIDELITY_TOKENS, max(2048, cfg.tokens // 10))
        return measure_fidelity(model, tc, heldout, max_tokens=n_eval, seq_len=cfg.seq_len, progress=progress)

    periodic_eval = None
    if cfg.eval_every_tokens:
        heldout, _ = corpus_sequences(loaded, corpus, cfg.seq_len, heldout=True)
        periodic_eval = HeldOutReconstruction(model, heldout, min(cfg.eval_tokens or CURVE_TOKENS, CURVE_TOKENS),
                                              seq_len=cfg.seq_len)
    return train_transcoder(ModelLayers(model, cfg.activation_dtype), sequences, cfg, out_dir, model_name=loaded.name,
                            source_id=source_id_for(loaded, corpus_id), resume=resume, overwrite=overwrite,
                            progress=progress, log_path=log_path, device=device, stop_at_step=stop_at_step,
                            final_eval=final_eval if evaluate and cfg.eval_tokens != 0 else None,
                            periodic_eval=periodic_eval)
