"""Building the `world` organism end to end: corpus -> tokenizer -> training -> eval -> files."""

from __future__ import annotations

from pathlib import Path

from circuits.errors import CircuitsError
from circuits.models.cache import save_model_files
from circuits.models.world.corpus import make_corpus
from circuits.models.world.evaluate import corpus_accuracies
from circuits.models.world.tokenizer import (BOS, MAX_NUMBER, NUMBER_OFFSET, PAD,
                                             SPECIAL_TOKEN_KWARGS, build_vocab, make_tokenizer)
from circuits.models.world.train import VARIANTS, hooked_config, torch_threads, train_world_model


def build_world(out_dir: Path, variant: str = "world", progress: bool = True) -> dict:
    """Train the `variant` model ("world" or "world-tiny") and write its files into out_dir.

    Returns the meta dict (also written to meta.json): special tokens, training config, the corpus
    description (seed, held-out sets, fact tables) and the four eval accuracies.
    """
    if variant not in VARIANTS:
        raise CircuitsError(f"unknown world variant '{variant}' (known: {', '.join(VARIANTS)})")
    cfg = VARIANTS[variant]
    corpus = make_corpus(cfg.seed)
    vocab = build_vocab([e.text for e in corpus.all_examples()])
    tokenizer = make_tokenizer(vocab)

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False).ids

    with torch_threads(cfg.threads):
        model = train_world_model(corpus, encode, len(vocab), vocab[BOS], vocab[PAD], cfg, progress=progress)
        accuracies = corpus_accuracies(model, corpus, encode, vocab[BOS], vocab[PAD])
    meta = {
        "variant": variant,
        "architecture": "HookedTransformer (TransformerLens 3.9), LayerNorm, learned positions",
        "special_tokens": SPECIAL_TOKEN_KWARGS,
        "numbers": {"min": 0, "max": MAX_NUMBER, "first_id": NUMBER_OFFSET,
                    "note": "the integer n is the single token str(n), id first_id + n"},
        "train_config": cfg.model_dump(),
        "corpus": corpus.meta(),
        "eval": accuracies,
    }
    # TransformerLens sets cfg fields at init; save the config the model was built with.
    assert model.cfg.d_vocab == hooked_config(cfg, len(vocab)).d_vocab
    save_model_files(out_dir, model, tokenizer.to_str(pretty=True), meta)
    return meta
