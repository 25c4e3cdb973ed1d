"""The prose corpus ships as package data (circuits.corpora.shipped): first use unpacks it in
seconds instead of generating it for minutes (issue 23); a damaged copy is refused."""

from __future__ import annotations

import hashlib
import lzma
import json

import pytest

from circuits.corpora import builtin as corpora
from circuits.corpora import prose as pc
from circuits.corpora import shipped
from circuits.errors import CircuitsError

needs_shipped = pytest.mark.skipif(shipped.shipped_record("smollm2-prose") is None,
                                   reason="the prose corpus is not shipped in this checkout")


@needs_shipped
def test_the_shipped_prose_matches_its_record_and_the_generator_as_it_is_now():
    record = shipped.shipped_record("smollm2-prose")
    text = lzma.decompress((shipped.SHIPPED_DIR / "smollm2-prose.txt.xz").read_bytes())
    assert hashlib.sha256(text).hexdigest() == record["sha256"]
    assert text.count(b"\n") == record["documents"] > 500
    # changing the prompts or a sampling setting without regenerating the shipped text fails here
    assert record["settings"] == pc.generation_settings()


@needs_shipped
def test_first_use_unpacks_the_shipped_prose_without_running_the_model(circuits_home, monkeypatch):
    def no_generation(*args, **kwargs):
        raise AssertionError("the generator ran although the corpus is shipped")

    monkeypatch.setattr(pc, "build_prose_corpus", no_generation)
    path = corpora.builtin_corpus_file("smollm2-prose", rebuild=True)  # the home may hold other tests' fakes
    record = corpora.corpus_record("smollm2-prose")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == record["sha256"] == \
        shipped.shipped_record("smollm2-prose")["sha256"]
    assert "unpacked from the package" in record["shipped"]


def test_a_damaged_shipped_copy_is_refused_and_leaves_no_file(tmp_path, monkeypatch):
    folder = tmp_path / "shipped"
    folder.mkdir()
    (folder / "x.txt.xz").write_bytes(lzma.compress(b"one line\ntwo lines\n"))
    good = hashlib.sha256(b"one line\ntwo lines\n").hexdigest()
    (folder / "x.json").write_text(json.dumps({"name": "x", "sha256": good}))
    monkeypatch.setattr(shipped, "SHIPPED_DIR", folder)
    assert shipped.unpack_shipped("x", tmp_path / "ok.txt")["sha256"] == good
    assert (tmp_path / "ok.txt").read_bytes() == b"one line\ntwo lines\n"
    (folder / "x.txt.xz").write_bytes(lzma.compress(b"one line\ntwo linez\n"))
    with pytest.raises(CircuitsError, match="shipped corpus 'x' is damaged"):
        shipped.unpack_shipped("x", tmp_path / "bad.txt")
    assert not (tmp_path / "bad.txt").exists()
    assert shipped.unpack_shipped("not-shipped", tmp_path / "none.txt") is None


def test_ship_then_unpack_round_trips_and_a_mismatched_record_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(shipped, "SHIPPED_DIR", tmp_path / "shipped")
    text = tmp_path / "corpus.txt"
    text.write_text("alpha\nbeta\n")
    record = {"source": "test", "sha256": hashlib.sha256(b"alpha\nbeta\n").hexdigest(), "documents": 2}
    with pytest.raises(CircuitsError, match="does not match its record"):
        shipped.ship_corpus("c", text, {**record, "sha256": "0" * 64})
    shipped.ship_corpus("c", text, record)
    assert shipped.unpack_shipped("c", tmp_path / "out.txt")["documents"] == 2
    assert (tmp_path / "out.txt").read_text() == "alpha\nbeta\n"


def test_regenerate_is_refused_for_a_corpus_that_is_not_shipped(circuits_home):
    with pytest.raises(CircuitsError, match="--regenerate is for shipped corpora"):
        corpora.builtin_corpus_file("python-docstrings", regenerate=True)
