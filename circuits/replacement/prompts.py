"""Turning user prompts into token ids, with one-line errors for bad input."""

from __future__ import annotations

import torch

from circuits.errors import CircuitsError


def tokenize_prompt(model, prompt: str) -> torch.Tensor:
    """Token ids `[pos]` for `prompt` (BOS prepended as the model expects).

    Refuses an empty prompt, words the tokenizer does not know, and prompts longer than the
    model's context.
    """
    if not prompt or not prompt.strip():
        raise CircuitsError("the prompt is empty")
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise CircuitsError("this model has no tokenizer attached")
    tokens = model.to_tokens(prompt, prepend_bos=True, truncate=False)[0]
    unk_id = tokenizer.unk_token_id
    if unk_id is not None and unk_id != tokenizer.bos_token_id and bool((tokens == unk_id).any()):
        encoding = tokenizer.backend_tokenizer.encode(prompt, add_special_tokens=False)
        unknown = sorted({w for w, i in zip(encoding.tokens, encoding.ids) if i == unk_id}
                         | {prompt[a:b] for (a, b), i in zip(encoding.offsets, encoding.ids) if i == unk_id})
        unknown = [u for u in unknown if u and u != tokenizer.unk_token]
        raise CircuitsError(f"the model's tokenizer does not know: {', '.join(unknown) or '(unknown token)'}")
    if tokens.shape[0] > model.cfg.n_ctx:
        raise CircuitsError(
            f"the prompt has {tokens.shape[0]} tokens but the model's context is {model.cfg.n_ctx}")
    return tokens


def token_id(model, token: str) -> int:
    """The vocabulary id of a single token given as text (leading space optional for BPE models)."""
    tokenizer = model.tokenizer
    vocab = tokenizer.get_vocab()
    if token in vocab:
        return vocab[token]
    # " Paris" is one BPE token spelled "ĠParis" in the vocabulary: encode before trying the
    # stripped text, which is another token ("Paris", the word without its space)
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) == 1 and ids[0] != tokenizer.unk_token_id:
        return ids[0]
    if token.strip() in vocab:
        return vocab[token.strip()]
    raise CircuitsError(f"'{token}' is not a single token in the model's vocabulary")


@torch.no_grad()
def next_token_distribution(model, prompt: str, top: int = 5) -> list[dict]:
    tokens = tokenize_prompt(model, prompt).to(model.cfg.device)
    logits = model(tokens[None])[0, -1].float()
    probs = torch.softmax(logits, -1)
    values, ids = probs.topk(min(top, probs.shape[0]))
    return [{"token": model.tokenizer.decode([int(i)]), "id": int(i), "prob": float(v)}
            for v, i in zip(values, ids)]
