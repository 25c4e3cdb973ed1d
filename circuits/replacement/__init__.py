"""The local replacement model and what it is made of: `ReplacementModel` (model.py: a model with its
transcoders), the frozen linear model of one prompt (local.py), where transcoders meet a model's
hooks (hooks.py) and prompts turned into tokens (prompts.py)."""
