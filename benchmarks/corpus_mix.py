"""What a built-in mixed corpus's training stream holds along the way: the share of each source
among the first N training positions (as the trainer reads them: windows of --seq-len with BOS),
and among the first held-out positions the fidelity reports read.

    CIRCUITS_HOME=... python benchmarks/corpus_mix.py --model smollm2-135m [--corpus smollm2-mix] \\
        [--marks 40960,122880,150000,245760] [--heldout 4096]

A run that caches its first N positions trains on that prefix only; if the corpus is not
stationary (smollm2-mix interleaves its sources until the shorter one runs out), a longer run's
data drifts away from a short run's and from the held-out positions. Not a test; it prints a table.
"""

from __future__ import annotations

import argparse


def main() -> None:
    from circuits.corpora.builtin import MIX_PATTERN, builtin_corpus_file
    from circuits.corpora.sequences import HELDOUT_EVERY, _windows, bos_prefix, encode_text
    from circuits.models import load_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--corpus", default="smollm2-mix")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--marks", default="40960,122880,150000,245760")
    ap.add_argument("--heldout", type=int, default=4096)
    args = ap.parse_args()
    tok = load_model(args.model, progress=False).tokenizer
    parts = list(dict.fromkeys(MIX_PATTERN))
    source_of = {}
    for name in parts:
        for line in builtin_corpus_file(name).read_text(encoding="utf-8").splitlines():
            source_of.setdefault(line, name)
    prefix = bos_prefix(tok)
    marks = sorted(int(m) for m in args.marks.split(","))
    train = {p: 0 for p in parts}
    held = {p: 0 for p in parts}
    rows = []
    for i, line in enumerate(builtin_corpus_file(args.corpus).read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        # positions as the trainer and the fidelity report count them: each window without its BOS
        n = sum(len(w) - len(prefix) for w in _windows(encode_text(tok, line), prefix, args.seq_len))
        counts = held if i % HELDOUT_EVERY == HELDOUT_EVERY - 1 else train
        if counts is held and sum(held.values()) >= args.heldout:
            continue
        counts[source_of.get(line, "other")] = counts.get(source_of.get(line, "other"), 0) + n
        while counts is train and marks and sum(train.values()) >= marks[0]:
            rows.append((f"first {marks.pop(0):,} training positions (line {i})", dict(train)))
    rows.append((f"all {sum(train.values()):,} training positions", dict(train)))
    rows.append((f"first {sum(held.values()):,} held-out positions", dict(held)))
    print(f"| {args.corpus} | " + " | ".join(f"{p} share" for p in parts) + " |")
    print("|---|" + "---:|" * len(parts))
    for label, counts in rows:
        total = max(sum(counts.values()), 1)
        print(f"| {label} | " + " | ".join(f"{counts.get(p, 0) / total:.2f}" for p in parts) + " |")


if __name__ == "__main__":
    main()
