"""ReplacementModel: a model with its transcoders, the object every job of the engine takes.

    rm = ReplacementModel.load("world")          # model + default CLT (+ feature index), built on first use
    result = rm.trace("calc: 36+59=")            # circuits.trace.TraceResult: graph, pruned graph, summary
    rm.intervene("calc: 36+59=", {"3:5:17": 0.0, "2:-1:40": "x2"})   # ids as `trace` prints them

It bundles the loaded model (its name, weights fingerprint and where it came from), the transcoder,
the transcoder directory and the feature index stored there (read on first use). Built once, reused
for every prompt: trace, intervene, the feature index, the demos and validation all take it.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import torch

from circuits.models.registry import LoadedModel

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from circuits.features.store import FeatureIndex
    from circuits.interventions import Intervention, InterventionResult
    from circuits.attribution.config import TraceConfig
    from circuits.trace import TraceResult
    from transcoders.transcoder import Transcoder

_UNREAD = object()


class ReplacementModel:
    """A model (HookedTransformer, tokenizer attached) and the transcoder that replaces its MLPs."""

    def __init__(self, loaded: LoadedModel, transcoder: Transcoder, transcoder_dir: str | Path | None = None,
                 index: FeatureIndex | None | object = _UNREAD):
        self.loaded = loaded
        self.transcoder = transcoder
        self.transcoder_dir = Path(transcoder_dir) if transcoder_dir is not None else None
        self._index = index

    @classmethod
    def load(cls, model: str = "world", transcoders: str | Path | None = None, device: str = "cpu",
             progress: bool = True, dtype: str | torch.dtype | None = None) -> ReplacementModel:
        """Load `model` (built-in name, checkpoint directory or hub id) and its transcoders: the
        directory `transcoders`, or the built-in model's default CLT (trained on first use).
        `dtype`: the model's weights and forward (float32 default, bfloat16, float16); attribution
        stays float32 (docs/attribution.md, "Precision")."""
        from circuits.replacement.hooks import load_fitting_transcoder
        from circuits.models.registry import load_model

        loaded = load_model(model, device=device, progress=progress, dtype=dtype)
        if transcoders is None:
            from circuits.training.defaults import ensure_default_transcoder

            tc, path = ensure_default_transcoder(loaded, progress=progress)
        else:
            path = Path(transcoders)
            tc = load_fitting_transcoder(loaded.model, path, device=device)
        return cls(loaded, tc, path)

    # --- what it holds ---------------------------------------------------------------------------
    @property
    def model(self) -> HookedTransformer:
        return self.loaded.model

    @property
    def tokenizer(self):
        return self.loaded.model.tokenizer

    @property
    def name(self) -> str:
        return self.loaded.name

    @cached_property
    def identity(self) -> dict:
        """The model's identity as graphs record it (name, path, shape, parameter count)."""
        from circuits.models.registry import model_summary

        return model_summary(self.loaded)

    @property
    def index(self) -> FeatureIndex | None:
        """The feature index beside the transcoders (None if there is none), read once."""
        if self._index is _UNREAD:
            from circuits.features.store import load_feature_index

            self._index = load_feature_index(self.transcoder_dir) if self.transcoder_dir is not None else None
        return self._index

    def tokens(self, prompt: str) -> torch.Tensor:
        """The prompt's token ids [pos] (BOS first), checked against the model's context."""
        from circuits.replacement.prompts import tokenize_prompt

        return tokenize_prompt(self.model, prompt)

    # --- what it does ----------------------------------------------------------------------------
    def trace(self, prompt: str, config: TraceConfig | None = None, progress: bool = False,
              **settings) -> TraceResult:
        """Attribution graph of `prompt`, pruned and scored. `settings` are TraceConfig fields
        (node_threshold=0.8, edge_threshold=0.98, max_feature_nodes, targets, contrast, ...)."""
        from circuits.attribution.config import TraceConfig
        from circuits.trace import trace_prompt

        if settings:
            config = (config or TraceConfig()).model_copy(update=settings)
            config = TraceConfig.model_validate(config.model_dump())
        return trace_prompt(self, prompt, config, progress=progress)

    def trace_many(self, prompts, config: TraceConfig | None = None, progress: bool = False,
                   batch_prompts: int = 1):
        """Yield (PromptItem, TraceResult) per prompt, in order (circuits.batch.trace_many): strings,
        or dicts with prompt and optional target/contrast/id; every prompt is checked first.
        batch_prompts > 1: the rows of that many prompts share backward sweeps (graphs equal to
        1e-6 relative; circuits.attribution.batched)."""
        from circuits.batch.trace_many import trace_many

        return trace_many(self, prompts, config, progress, batch_prompts)

    def intervene(self, prompt: str, sets: Mapping[str, float | str] | Sequence[Intervention],
                  layers: tuple[int, int | None] | None = None, freeze_attention: bool = True,
                  clamp_mlps: bool = False, top: int = 10, generate: int = 0) -> InterventionResult:
        """Constrained patching (circuits.interventions.intervene). `sets` maps feature ids
        'LAYER:POS:FEATURE' (as `trace` prints them) to a value, or to 'xMULT' to scale the activation."""
        from circuits.interventions import intervene, parse_set

        if isinstance(sets, Mapping):
            sets = [parse_set(f"{fid}={value}") for fid, value in sets.items()]
        return intervene(self, prompt, sets, layers=layers, freeze_attention=freeze_attention, clamp_mlps=clamp_mlps,
                         top=top, generate=generate)
