"""The built-in text corpora: built offline on first use, cached, rebuildable with one command
(`circuits models corpus NAME --rebuild`).

    python-docstrings  the Python standard library's docstrings (circuits.corpora.docstrings), PSF-2.0
    smollm2-prose      SmolLM2-135M-Instruct's answers about places and subjects (circuits.corpora.prose)
    smollm2-mix        the two interleaved, two prose lines to one docstring (MIX_PATTERN): the
                       default corpus of `smollm2-135m`'s transcoders, feature index and fidelity

Each is $CIRCUITS_HOME/corpora/<name>.txt, one document per line, beside <name>.json, its
provenance (source, licence, documents, characters, sha256).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from circuits.errors import write_output

# Line pattern of the mix. Its period (3) is prime to the held-out stride (every 10th line,
# circuits.corpora.sequences), so held-out lines come from both sources in the mix's proportion.
MIX_PATTERN = ("smollm2-prose", "smollm2-prose", "python-docstrings")


def _docstrings(out_file: Path) -> dict:
    from circuits.corpora.docstrings import build_docstring_corpus

    return build_docstring_corpus(out_file)


def _prose(out_file: Path, regenerate: bool = False) -> dict:
    """The shipped text (circuits.corpora.shipped, seconds), or with `regenerate` the model writes
    it again (minutes) and the record says whether it equals the shipped text."""
    from circuits.corpora.prose import build_prose_corpus
    from circuits.corpora.shipped import shipped_record, unpack_shipped

    if not regenerate and (record := unpack_shipped("smollm2-prose", out_file)) is not None:
        return record
    record = build_prose_corpus(out_file)
    shipped = shipped_record("smollm2-prose")
    if shipped is not None:
        record["equals_shipped"] = record["sha256"] == shipped["sha256"]
    return record


def interleave(sources: dict[str, Path], pattern: tuple[str, ...], out_file: Path) -> dict:
    """Write the lines of `sources` into out_file, taking one line from each name of `pattern` in
    turn, until one source runs out; then the rest of the others, in pattern order."""
    files = {name: path.open(encoding="utf-8") for name, path in sources.items()}
    digest, counts = hashlib.sha256(), dict.fromkeys(sources, 0)
    try:
        with Path(out_file).open("w", encoding="utf-8") as out:
            def put(name: str, line: str) -> None:
                out.write(line)
                digest.update(line.encode())
                counts[name] += 1

            done = False
            while not done:
                for name in pattern:
                    line = files[name].readline()
                    if not line:
                        done = True
                        break
                    put(name, line)
            for name in dict.fromkeys(pattern):
                for line in files[name]:
                    put(name, line)
    finally:
        for f in files.values():
            f.close()
    return {"documents": sum(counts.values()), "documents_per_source": counts, "sha256": digest.hexdigest()}


# What each part of the mix costs on first use (2 CPU cores), said before its bars start.
_PART_WORK = {"python-docstrings": "the Python standard library's docstrings (seconds)",
              "smollm2-prose": "SmolLM2-135M-Instruct's prose answers, unpacked from the package (seconds)"}


def say_stage(text: str) -> None:
    """One line on stderr naming a stage of a long first-use build (before its progress bars)."""
    import sys

    print(text, file=sys.stderr, flush=True)


def _mix(out_file: Path) -> dict:
    names = list(dict.fromkeys(MIX_PATTERN))
    steps = len(names) + 1
    sources = {}
    for step, name in enumerate(names, 1):
        cached = _is_built(name)
        say_stage(f"building the SmolLM2 corpus, step {step} of {steps}: {_PART_WORK.get(name, name)}"
                  + (" (cached)" if cached else ""))
        sources[name] = builtin_corpus_file(name)
    say_stage(f"building the SmolLM2 corpus, step {steps} of {steps}: interleaving "
              + " and ".join(names) + " into smollm2-mix")
    meta = interleave(sources, MIX_PATTERN, out_file)
    records = {name: corpus_record(name) for name in names}
    return {"source": "interleaved, line pattern " + " / ".join(MIX_PATTERN) + ", then the rest of the longer",
            "license": "; ".join(f"{name}: {r.get('license')}" for name, r in records.items()),
            "parts": {name: {k: r.get(k) for k in ("source", "documents", "sha256")} for name, r in records.items()},
            **meta}


BUILTIN_CORPORA = {"python-docstrings": _docstrings, "smollm2-prose": _prose, "smollm2-mix": _mix}


def builtin_corpus_file(name: str, rebuild: bool = False, regenerate: bool = False) -> Path:
    """$CIRCUITS_HOME/corpora/<name>.txt (+ <name>.json, its provenance), built if missing.
    `regenerate` (with rebuild): a shipped corpus is made by its generator instead of unpacked."""
    from circuits.paths import circuits_home, writable_dir

    folder = writable_dir(circuits_home() / "corpora")
    text, record = folder / f"{name}.txt", folder / f"{name}.json"
    if regenerate:
        from circuits.corpora.shipped import SHIPPED_DIR, shipped_record

        if shipped_record(name) is None:
            from circuits.errors import CircuitsError

            shipped = sorted(p.name.removesuffix(".txt.xz") for p in SHIPPED_DIR.glob("*.txt.xz"))
            raise CircuitsError(f"--regenerate is for shipped corpora ({', '.join(shipped) or 'none'}); "
                                f"'{name}' is always made by its builder: use --rebuild")
        rebuild = True
    if rebuild or not (text.is_file() and record.is_file()):
        scratch = folder / f".{name}.txt.{os.getpid()}.partial"  # one per process: concurrent builds never mix
        try:
            meta = BUILTIN_CORPORA[name](scratch, **({"regenerate": True} if regenerate else {}))
            scratch.replace(text)
        finally:
            scratch.unlink(missing_ok=True)
        write_output(record, json.dumps({"name": name, **meta}, indent=2), "corpus record")
    return text


def _is_built(name: str) -> bool:
    from circuits.paths import circuits_home

    folder = circuits_home() / "corpora"
    return (folder / f"{name}.txt").is_file() and (folder / f"{name}.json").is_file()


def corpus_record(name: str) -> dict:
    return json.loads(builtin_corpus_file(name).with_suffix(".json").read_text())
