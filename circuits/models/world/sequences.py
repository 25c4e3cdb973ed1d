"""The `world` model's corpus as token sequences for transcoders (training and held-out fidelity)."""

from __future__ import annotations

from typing import Iterable, Iterator

from circuits.training.corpus import HELDOUT_EVERY, bos_prefix, encode_text


def _world_pool(kind: str) -> str:
    if kind.startswith("addition"):
        return "addition"
    return "facts" if kind.startswith(("one_hop", "two_hop")) else "aux"


class WorldSequences:
    """An endless seeded stream of `world` corpus lines ([BOS] + tokens), pooled into addition /
    facts / other and mixed like the model's own training batches (batch_* in its meta.json;
    256 / 64 / 32 if absent). Lines with index % 10 == 9 in each pool are held out, except the
    case-study prompts, which are always trained on. The training stream weights facts by
    `fact_boost`: memorised facts need more of the transcoder's capacity than their share of text."""

    def __init__(self, loaded, seq_len: int, heldout: bool = False, seed: int = 0, fact_boost: float = 1.0):
        from circuits.models.world.corpus import make_corpus

        corpus_meta = loaded.meta.get("corpus", {})
        corpus = make_corpus(corpus_meta.get("seed", 0))
        always_train = set(corpus_meta.get("case_study_prompts", []))
        tok, prefix = loaded.tokenizer, bos_prefix(loaded.tokenizer)
        by_pool: dict[str, list] = {}
        for example in corpus.all_examples():
            by_pool.setdefault(_world_pool(example.kind), []).append(example)
        tcfg = loaded.meta.get("train_config", {})
        weights = {"addition": tcfg.get("batch_addition", 256), "facts": tcfg.get("batch_facts", 64) * fact_boost,
                   "aux": tcfg.get("batch_aux", tcfg.get("batch_count", 32))}
        self.pools, self.weights = [], []
        for name, examples in sorted(by_pool.items()):
            held = [i % HELDOUT_EVERY == HELDOUT_EVERY - 1 and e.prompt not in always_train
                    for i, e in enumerate(examples)]
            chosen = [e for e, h in zip(examples, held) if h == heldout]
            if chosen and weights.get(name, 0) > 0:
                self.pools.append([(prefix + encode_text(tok, e.text))[:seq_len] for e in chosen])
                self.weights.append(weights[name])
        self.seed, self.heldout = seed + (1 if heldout else 0), heldout

    def __iter__(self) -> Iterator[list[int]]:
        import random

        rng = random.Random(self.seed)
        indices = range(len(self.pools))
        while True:
            pool = self.pools[rng.choices(indices, self.weights)[0]]
            yield pool[rng.randrange(len(pool))]


WORLD_FACT_BOOST = 2.0  # the transcoder's training stream; held-out text keeps the model's own mix


def world_sequences(loaded, seq_len: int, heldout: bool = False) -> Iterable[list[int]]:
    """The `world` model's transcoder corpus (the registry entry's `corpus`)."""
    return WorldSequences(loaded, seq_len, heldout, fact_boost=1.0 if heldout else WORLD_FACT_BOOST)
