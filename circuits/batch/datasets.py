"""Built-in prompt sets for dataset studies (`circuits evaluate --dataset NAME`), generated offline
and reproducibly from a seed; each prompt has its ground-truth target and a contrast token.

- world-addition: `calc: A+B=` (A, B in 10..99, the world corpus's range) -> A+B, contrast A+B-1.
- world-two-hop: the world corpus's two-hop queries (city/team/player -> state -> capital) ->
  the capital; contrast: another state's capital.
- smollm2-induction: a random sequence of whole-word tokens, repeated: "w1 ... wk w1 ... w(k-1)"
  -> " wk"; contrast: another word of the sequence. Tokens are drawn from the model's vocabulary
  (a space then letters, decoding and re-encoding to the same single id), so every prompt tokenizes
  as generated.
- smollm2-capitals: "The capital of STATE is" -> " CAPITAL" (the world organism's facts, which are
  true), contrast another capital; only pairs whose answers are single tokens of the model.
"""

from __future__ import annotations

import random

from circuits.batch.inputs import PromptItem
from circuits.errors import CircuitsError

DATASETS = ("world-addition", "world-two-hop", "smollm2-induction", "smollm2-capitals")


def world_addition(n: int, seed: int) -> list[dict]:
    from circuits.models.world.corpus import ADD_RANGE

    rng = random.Random(seed)
    pairs = [(a, b) for a in ADD_RANGE for b in ADD_RANGE]
    return [{"prompt": f"calc: {a}+{b}=", "target": str(a + b), "contrast": str(a + b - 1), "id": f"add-{a}-{b}"}
            for a, b in rng.sample(pairs, n)]


def world_two_hop(n: int, seed: int) -> list[dict]:
    from circuits.models.world.corpus import two_hop_examples
    from circuits.models.world.facts import STATE_CAPITAL

    rng = random.Random(seed)
    examples = two_hop_examples()
    picked = rng.sample(examples, min(n, len(examples)))
    capitals = sorted(set(STATE_CAPITAL.values()))
    out = []
    for i, ex in enumerate(picked):
        contrast = rng.choice([c for c in capitals if c != ex.answer])
        out.append({"prompt": ex.prompt, "target": ex.answer, "contrast": contrast, "id": f"twohop-{i:04d}"})
    return out


def _word_tokens(tokenizer) -> list[int]:
    """Vocabulary ids of whole-word tokens (3-10 ASCII letters, with or without a leading space)
    that re-encode to themselves."""
    ids = []
    for token_id in range(min(len(tokenizer), 20000)):
        text = tokenizer.decode([token_id])
        word = text[1:] if text.startswith(" ") else text
        if 3 <= len(word) <= 10 and word.isascii() and word.isalpha():
            if tokenizer.encode(text, add_special_tokens=False) == [token_id]:
                ids.append(token_id)
    spaced = [i for i in ids if tokenizer.decode([i]).startswith(" ")]
    return spaced if len(spaced) >= 100 else ids  # BPE: words that carry their space; word-level: all


def _spelled(tokenizer, ids: list[int]) -> str | None:
    """Text that tokenizes to exactly `ids` (BPE words carry their space; word-level tokenizers
    need one between words), or None."""
    parts = [tokenizer.decode([i]) for i in ids]
    for text in ("".join(parts), " ".join(p.strip() for p in parts)):
        if tokenizer.encode(text, add_special_tokens=False) == ids:
            return text
    return None


def smollm2_induction(n: int, seed: int, tokenizer, length: int = 8) -> list[dict]:
    rng = random.Random(seed)
    words = _word_tokens(tokenizer)
    if len(words) < length:
        raise CircuitsError("the model's vocabulary has too few whole-word tokens for an induction set")
    out = []
    for _ in range(50 * n):
        if len(out) == n:
            break
        seq = rng.sample(words, length)
        prompt = _spelled(tokenizer, seq + seq[:-1])
        if prompt is None:
            continue
        out.append({"prompt": prompt, "target": tokenizer.decode([seq[-1]]), "contrast": tokenizer.decode([seq[0]]),
                    "id": f"induction-{len(out):04d}"})
    if len(out) < n:
        raise CircuitsError(f"could not spell {n} induction prompts with this tokenizer")
    return out


def smollm2_capitals(n: int, seed: int, tokenizer) -> list[dict]:
    from circuits.models.world.facts import STATE_CAPITAL

    single = {s: c for s, c in STATE_CAPITAL.items() if len(tokenizer.encode(" " + c, add_special_tokens=False)) == 1}
    if len(single) < 2:
        raise CircuitsError("fewer than two capitals are single tokens of this model")
    rng = random.Random(seed)
    states = rng.sample(sorted(single), min(n, len(single)))
    return [{"prompt": f"The capital of {s} is", "target": " " + single[s],
             "contrast": " " + rng.choice([c for c in single.values() if c != single[s]]), "id": f"capital-{i:04d}"}
            for i, s in enumerate(states)]


def dataset(name: str, n: int = 50, seed: int = 0, tokenizer=None) -> list[PromptItem]:
    """The first `n` prompts of the built-in set `name` (seeded: the same list on every machine)."""
    from circuits.batch.inputs import as_items

    if name == "world-addition":
        records = world_addition(n, seed)
    elif name == "world-two-hop":
        records = world_two_hop(n, seed)
    elif name in ("smollm2-induction", "smollm2-capitals"):
        if tokenizer is None:
            raise CircuitsError(f"dataset {name} is built from the model's tokenizer; load the model first")
        records = smollm2_induction(n, seed, tokenizer) if name == "smollm2-induction" else \
            smollm2_capitals(n, seed, tokenizer)
    else:
        raise CircuitsError(f"unknown dataset {name!r} (built in: {', '.join(DATASETS)})")
    return as_items(records)


def model_of(name: str) -> str:
    """The built-in model a dataset is made for."""
    return "world" if name.startswith("world") else "smollm2-135m"
