"""The `world` tokenizer: a word-level `tokenizers` tokenizer over the corpus vocabulary.

Words and single punctuation marks are tokens, so `calc: 36+59=` is [calc, :, 36, +, 59, =] and
`Kobe Bryant` is [Kobe, Bryant]. Every integer 0..198 is one token (id = NUMBER_OFFSET + n), so a
two-digit sum is a single answer token. Unknown words map to UNK, which the prompt checker
reports. The tokenizer itself adds nothing; TransformerLens prepends BOS.
"""

from __future__ import annotations

import re

from tokenizers import Tokenizer, models, pre_tokenizers

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]
MAX_NUMBER = 198  # 99 + 99
NUMBER_OFFSET = len(SPECIAL_TOKENS)  # id of "0"

# kwargs for transformers.PreTrainedTokenizerFast (stored in meta.json as "special_tokens").
# add_bos_token: the fast tokenizer prepends BOS itself, so TransformerLens never has to reload it.
SPECIAL_TOKEN_KWARGS = {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": PAD,
                        "add_bos_token": True}

_WORD = re.compile(r"[A-Za-z0-9]+|[^\sA-Za-z0-9]")


def split_words(text: str) -> list[str]:
    """The tokens of `text` as this tokenizer splits it (words, numbers, single punctuation marks)."""
    return _WORD.findall(text)


def build_vocab(texts: list[str]) -> dict[str, int]:
    """Specials, then the numbers 0..198, then every other word of `texts` in sorted order."""
    numbers = [str(n) for n in range(MAX_NUMBER + 1)]
    words = sorted({w for t in texts for w in split_words(t)} - set(numbers) - set(SPECIAL_TOKENS))
    return {tok: i for i, tok in enumerate(SPECIAL_TOKENS + numbers + words)}


def make_tokenizer(vocab: dict[str, int]) -> Tokenizer:
    """A word-level tokenizer: split on whitespace, then isolate every punctuation mark."""
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")])
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok


def number_token_id(n: int) -> int:
    """The vocabulary id of the integer n (0 <= n <= 198)."""
    if not 0 <= n <= MAX_NUMBER:
        raise ValueError(f"{n} is not a single-token number (0..{MAX_NUMBER})")
    return NUMBER_OFFSET + n
