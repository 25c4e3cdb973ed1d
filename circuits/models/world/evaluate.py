"""Accuracy of the `world` organism: greedy top-1 on the first answer token of each prompt.

- addition_heldout_acc: the held-out addition pairs (never trained on, in either order);
- one_hop_acc: every one-hop fact in every template (all trained);
- two_hop_acc: the trained two-hop queries;
- two_hop_heldout_acc: the held-out two-hop queries (their one-hop facts are trained).
"""

from __future__ import annotations

from typing import Callable

import torch

from circuits.models.world.corpus import Example, WorldCorpus, make_corpus


@torch.no_grad()
def answer_accuracy(model, examples: list[Example], encode: Callable[[str], list[int]], bos_id: int,
                    pad_id: int, batch_size: int = 512) -> float:
    """Share of examples whose first answer token is the model's top-1 next token after the prompt."""
    if not examples:
        return float("nan")
    correct = 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        prompts = [[bos_id] + encode(e.prompt) for e in chunk]
        targets = torch.tensor([encode(e.answer)[0] for e in chunk])
        width = max(len(p) for p in prompts)
        tokens = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        for i, p in enumerate(prompts):
            tokens[i, :len(p)] = torch.tensor(p)
        last = torch.tensor([len(p) - 1 for p in prompts])
        logits = model(tokens.to(model.cfg.device))  # [batch, pos, vocab]
        predicted = logits[torch.arange(len(chunk)), last.to(logits.device)].argmax(-1).cpu()
        correct += int((predicted == targets).sum())
    return correct / len(examples)


def corpus_accuracies(model, corpus: WorldCorpus, encode: Callable[[str], list[int]], bos_id: int,
                      pad_id: int) -> dict[str, float]:
    """The four accuracies reported for `world` (see module docstring)."""
    sets = {"addition_heldout_acc": corpus.addition_heldout, "one_hop_acc": corpus.one_hop,
            "two_hop_acc": corpus.two_hop_train, "two_hop_heldout_acc": corpus.two_hop_heldout}
    return {key: round(answer_accuracy(model, exs, encode, bos_id, pad_id), 4) for key, exs in sets.items()}


def evaluate_world(loaded) -> dict[str, float]:
    """Evaluate a loaded `world` model (a LoadedModel) on the corpus recorded in its meta.json."""
    tokenizer = loaded.model.tokenizer
    seed = loaded.meta.get("corpus", {}).get("seed", 0)
    corpus = make_corpus(seed)

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    return corpus_accuracies(loaded.model, corpus, encode, tokenizer.bos_token_id, tokenizer.pad_token_id)
