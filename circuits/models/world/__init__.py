"""`world`: the built-in model organism, trained here on a generated corpus whose facts we know.

- corpus.py: seeded lines (two-digit addition, counting, one-hop and two-hop US-geography facts)
  and the held-out evaluation sets; facts.py: the real-world tables behind them.
- tokenizer.py: a word-level `tokenizers` tokenizer (integers 0..198 are single tokens).
- train.py: the TransformerLens model and its training loop (variants `world`, `world-tiny`).
- evaluate.py: the four accuracies; build.py: corpus -> training -> eval -> cached files.
"""

from circuits.models.world.build import build_world
from circuits.models.world.corpus import WorldCorpus, make_corpus
from circuits.models.world.evaluate import evaluate_world

__all__ = ["WorldCorpus", "build_world", "evaluate_world", "make_corpus"]
