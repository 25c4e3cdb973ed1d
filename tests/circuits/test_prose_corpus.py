"""The model-generated prose corpus and the built-in mix (circuits.corpora.prose, circuits.corpora.builtin)."""

from __future__ import annotations

from pathlib import Path

import pytest

from circuits.corpora import builtin as corpora
from circuits.corpora import prose as pc
from circuits.corpora.sequences import TextFileSequences


def test_prompts_cover_every_subject_once_per_template_in_a_fixed_shuffled_order():
    prompts = pc.corpus_prompts()
    assert prompts == pc.corpus_prompts() and prompts != pc.corpus_prompts(seed=1)
    n = sum(len(s) * len(pc.TEMPLATES[k]) for k, s in
            {"country": pc.COUNTRIES, "state": pc.US_STATES, "city": pc.CITIES, "subject": pc.SUBJECTS}.items())
    assert len(prompts) == n == len(set(prompts))
    assert "What is the capital of France, and what is it like?" in prompts
    assert "Write a short paragraph about Germany." in prompts
    assert all(s and s == s.strip() for s in pc.SUBJECTS)
    # the case studies' prompts themselves are not in the corpus
    assert not any(p.startswith("The capital of") for p in prompts)


def test_clean_answer_stops_at_the_turn_end_and_flattens_whitespace():
    assert pc.clean_answer("Paris is\n\nthe  capital.<|im_end|><|im_end|>junk", "<|im_end|>") == "Paris is the capital."
    assert pc.clean_answer("no end token\t here", "<|im_end|>") == "no end token here"
    assert pc.chat_prompt("Hi.") == "<|im_start|>user\nHi.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from transformers import AutoTokenizer, LlamaForCausalLM

    from tests.helpers.tiny_checkpoints import make_tiny_llama

    path = make_tiny_llama(tmp_path_factory.mktemp("llama"))
    return LlamaForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_generation_is_seeded_batched_and_stops_at_the_token_target(tiny_lm):
    model, tok = tiny_lm
    messages = [f"Write about place number {i}." for i in range(7)]
    kw = dict(end_token="</s>", batch=3, max_new_tokens=6, progress=False)
    first = list(pc.generate_answers(model, tok, messages, target_tokens=10**6, **kw))
    again = list(pc.generate_answers(model, tok, messages, target_tokens=10**6, **kw))
    other = list(pc.generate_answers(model, tok, messages, target_tokens=10**6, seed=5, **kw))
    assert first == again and first != other
    assert [m for m, _, _ in first] == messages  # every message answered, in order, across 3 batches
    assert all(n == len(tok(a, add_special_tokens=False)["input_ids"]) and "</s>" not in a for _, a, n in first)
    # stops after the batch in which the answers reach the target
    target = first[0][2] + 1
    cut = list(pc.generate_answers(model, tok, messages, target_tokens=target, **kw))
    assert len(cut) == 3 and sum(n for _, _, n in cut) >= target


def _lines(path: Path, prefix: str, n: int) -> Path:
    path.write_text("".join(f"{prefix}{i}\n" for i in range(n)))
    return path


def test_interleave_follows_the_pattern_then_appends_the_rest(tmp_path):
    sources = {"p": _lines(tmp_path / "p.txt", "p", 5), "d": _lines(tmp_path / "d.txt", "d", 6)}
    meta = corpora.interleave(sources, ("p", "p", "d"), tmp_path / "mix.txt")
    lines = (tmp_path / "mix.txt").read_text().split()
    assert lines == ["p0", "p1", "d0", "p2", "p3", "d1", "p4", "d2", "d3", "d4", "d5"]
    assert meta["documents_per_source"] == {"p": 5, "d": 6} and meta["documents"] == 11


def test_the_mix_holds_out_lines_of_both_sources(tmp_path):
    """Held-out documents are every 10th line: the pattern's period must not make them all one source."""
    sources = {"smollm2-prose": _lines(tmp_path / "p.txt", "prose ", 300),
               "python-docstrings": _lines(tmp_path / "d.txt", "doc ", 150)}
    corpora.interleave(sources, corpora.MIX_PATTERN, tmp_path / "mix.txt")

    class WordTokenizer:
        bos_token_id = None

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [len(w) for w in text.split()]}

    held = list(TextFileSequences(tmp_path / "mix.txt", WordTokenizer(), 8, heldout=True))
    kinds = [s[0] for s in held]  # len("prose") = 5, len("doc") = 3
    assert kinds.count(5) == 2 * kinds.count(3) > 0


def test_the_mix_is_built_from_both_cached_corpora_with_provenance(circuits_home, monkeypatch):
    def fake(text):
        def build(out_file):
            Path(out_file).write_text(text)
            return {"source": f"fake {text[:4]}", "license": "L", "documents": text.count("\n"), "sha256": "x"}
        return build

    monkeypatch.setitem(corpora.BUILTIN_CORPORA, "smollm2-prose", fake("a\nb\nc\n"))
    monkeypatch.setitem(corpora.BUILTIN_CORPORA, "python-docstrings", fake("D\n"))
    path = corpora.builtin_corpus_file("smollm2-mix")
    assert path.read_text() == "a\nb\nD\nc\n"
    record = corpora.corpus_record("smollm2-mix")
    assert record["parts"]["smollm2-prose"]["documents"] == 3 and "smollm2-prose: L" in record["license"]


def test_the_generation_bar_moves_with_every_token_not_every_batch(tiny_lm, monkeypatch):
    """Issue 22: the SmolLM2 corpus bar showed 0% for ten minutes (it moved once per batch of 64
    answers), then estimated from 111 hours down to 16 minutes. It now moves with each token."""
    import tqdm.auto

    updates: list[int] = []

    class Recorder:
        def __init__(self, *args, **kwargs):
            self.n = 0

        def update(self, n):
            self.n += n
            updates.append(n)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(tqdm.auto, "tqdm", Recorder)
    model, tok = tiny_lm
    answers = pc.generate_answers(model, tok, [f"Write about place {i}." for i in range(3)], end_token="</s>",
                                  batch=3, max_new_tokens=6, target_tokens=10**6, progress=True)
    _, _, n_first = next(answers)
    live = updates[:next(i for i, u in enumerate(updates) if u < 0)]  # before the batch's count is settled
    assert len(live) >= 2 and all(u > 0 for u in live)  # one update per decoding step
    rest = list(answers)
    assert sum(updates) == n_first + sum(n for _, _, n in rest)  # the bar ends at the kept answers' tokens


def test_building_the_mix_names_each_stage(circuits_home, monkeypatch, capsys):
    def fake(text):
        def build(out_file):
            Path(out_file).write_text(text)
            return {"source": "fake", "license": "L", "documents": text.count("\n"), "sha256": "x"}
        return build

    monkeypatch.setitem(corpora.BUILTIN_CORPORA, "smollm2-prose", fake("a\nb\nc\n"))
    monkeypatch.setitem(corpora.BUILTIN_CORPORA, "python-docstrings", fake("D\n"))
    corpora.builtin_corpus_file("smollm2-mix", rebuild=True)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("building the SmolLM2 corpus")]
    assert [ln.split(":")[0] for ln in lines] == [f"building the SmolLM2 corpus, step {k} of 3" for k in (1, 2, 3)]
    assert "prose answers" in lines[0] and "docstrings" in lines[1] and "interleaving" in lines[2]
