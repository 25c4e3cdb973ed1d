"""Token sequences to train and evaluate transcoders on, for a loaded model.

- built-in models with a corpus of their own: the corpus named in their registry entry (`world`:
  its generator, WorldSequences below; `smollm2-135m`, `gemma3-270m`: the built-in text corpus
  `smollm2-mix`, circuits.corpora.builtin, built offline on first use)
- a built-in text corpus by name (`--corpus python-docstrings`)
- a local text file: one document per line; documents with index % 10 == 9 are held out for
  fidelity, the rest train
- a dataset name (Hugging Face `datasets`, streamed): needs the hub; offline it fails with one line
Every source is re-iterable and yields the same sequences in the same order each time (the
trainer relies on that to resume). Each sequence starts with the tokenizer's BOS when it has one.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Iterable, Iterator

from circuits.corpora.builtin import BUILTIN_CORPORA, builtin_corpus_file
from circuits.errors import CircuitsError
from circuits.models.registry import BUILTIN_MODELS, WORLD_CORPUS
from circuits.models.world.corpus import make_corpus

HELDOUT_EVERY = 10


def bos_prefix(tokenizer) -> list[int]:
    bos = getattr(tokenizer, "bos_token_id", None)
    return [int(bos)] if bos is not None else []


def encode_text(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _windows(ids: list[int], prefix: list[int], seq_len: int) -> Iterator[list[int]]:
    step = max(seq_len - len(prefix), 1)
    for start in range(0, len(ids), step):
        chunk = prefix + ids[start:start + step]
        if len(chunk) >= 2:
            yield chunk


def check_text_file(path: Path) -> None:
    """One-line errors for a missing, empty or non-text corpus file."""
    if not path.is_file():
        raise CircuitsError(f"corpus file {path} does not exist")
    head = path.open("rb").read(65536)
    if not head.strip():
        raise CircuitsError(f"corpus file {path} is empty")
    if b"\x00" in head:
        raise CircuitsError(f"corpus file {path} is not text (it contains NUL bytes)")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the read boundary
            raise CircuitsError(f"corpus file {path} is not UTF-8 text") from None


class TextFileSequences:
    """Documents (lines) of a text file, tokenised and cut into windows of seq_len tokens."""

    def __init__(self, path: Path, tokenizer, seq_len: int, heldout: bool = False):
        check_text_file(path)
        self.path, self.tokenizer, self.seq_len, self.heldout = Path(path), tokenizer, seq_len, heldout

    def __iter__(self) -> Iterator[list[int]]:
        prefix = bos_prefix(self.tokenizer)
        with self.path.open(encoding="utf-8", errors="replace") as f:
            for i, line in enumerate(f):
                if (i % HELDOUT_EVERY == HELDOUT_EVERY - 1) != self.heldout or not line.strip():
                    continue
                yield from _windows(encode_text(self.tokenizer, line.rstrip("\n")), prefix, self.seq_len)


class DatasetSequences:
    """A Hugging Face dataset's `text` column, streamed (needs the hub)."""

    def __init__(self, name: str, tokenizer, seq_len: int, heldout: bool = False):
        self.name, self.tokenizer, self.seq_len, self.heldout = name, tokenizer, seq_len, heldout
        self._open()  # fail early, with one line

    def _open(self):
        try:
            import datasets

            return datasets.load_dataset(self.name, split="train", streaming=True)
        except Exception as exc:  # noqa: BLE001 - any hub/network/name failure is the same user error
            raise CircuitsError(f"dataset '{self.name}' is unavailable ({type(exc).__name__}; offline?): "
                                "pass a local text file with --corpus FILE") from None

    def __iter__(self) -> Iterator[list[int]]:
        prefix = bos_prefix(self.tokenizer)
        for i, row in enumerate(self._open()):
            if (i % HELDOUT_EVERY == HELDOUT_EVERY - 1) != self.heldout:
                continue
            text = row.get("text") if isinstance(row, dict) else None
            if text:
                yield from _windows(encode_text(self.tokenizer, text), prefix, self.seq_len)


def builtin_text_sequences(name: str, tokenizer, seq_len: int, heldout: bool) -> TextFileSequences:
    """A built-in text corpus (circuits.corpora.builtin), built on first use, as TextFileSequences."""
    seqs = TextFileSequences(builtin_corpus_file(name), tokenizer, seq_len, heldout)
    seqs.corpus_id = f"builtin:{name}"
    return seqs


# --- the `world` organism's generated corpus ---------------------------------------------------
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
        self.seed = seed + (1 if heldout else 0)

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed)
        indices = range(len(self.pools))
        while True:
            pool = self.pools[rng.choices(indices, self.weights)[0]]
            yield pool[rng.randrange(len(pool))]


WORLD_FACT_BOOST = 2.0  # the transcoder's training stream; held-out text keeps the model's own mix


def world_sequences(loaded, seq_len: int, heldout: bool = False) -> Iterable[list[int]]:
    """The `world` model's transcoder corpus (the registry entry's `corpus`)."""
    return WorldSequences(loaded, seq_len, heldout, fact_boost=1.0 if heldout else WORLD_FACT_BOOST)


def corpus_sequences(loaded, corpus: str | None, seq_len: int, heldout: bool = False) -> tuple[Iterable[list[int]], str]:
    """(sequences, corpus_id) for `loaded` (a LoadedModel). corpus: file path, dataset name or None."""
    if corpus is None:
        builtin = BUILTIN_MODELS.get(loaded.name)
        if builtin is not None and builtin.corpus == WORLD_CORPUS:
            return world_sequences(loaded, seq_len, heldout), f"{loaded.name}-generator"
        if builtin is not None and builtin.corpus is not None:
            return builtin_text_sequences(builtin.corpus, loaded.tokenizer, seq_len, heldout), f"builtin:{builtin.corpus}"
        raise CircuitsError(f"model '{loaded.name}' has no built-in corpus: pass --corpus FILE "
                            "(one document per line) or a dataset name")
    if corpus in BUILTIN_CORPORA:
        return builtin_text_sequences(corpus, loaded.tokenizer, seq_len, heldout), f"builtin:{corpus}"
    path = Path(corpus).expanduser()
    if path.exists() or corpus.startswith((".", "/", "~")) or corpus.endswith((".txt", ".jsonl")):
        seqs = TextFileSequences(path, loaded.tokenizer, seq_len, heldout)
        digest = hashlib.sha256(path.read_bytes()[:1 << 20]).hexdigest()[:12]
        return seqs, f"file:{path.name}:{digest}"
    return DatasetSequences(corpus, loaded.tokenizer, seq_len, heldout), f"dataset:{corpus}"


def take_sequences(seqs: Iterable[list[int]], max_tokens: int) -> list[list[int]]:
    out, n = [], 0
    for s in seqs:
        out.append(list(s))
        n += len(s)
        if n >= max_tokens:
            break
    if not out:
        raise CircuitsError("the corpus produced no token sequences")
    return out
