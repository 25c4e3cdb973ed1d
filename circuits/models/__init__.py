"""Model loading: built-in model organisms, local Hugging Face checkpoints, hub ids."""

from circuits.models.registry import BUILTIN_MODELS, LoadedModel, build_model, list_models, load_model

__all__ = ["BUILTIN_MODELS", "LoadedModel", "build_model", "list_models", "load_model"]
