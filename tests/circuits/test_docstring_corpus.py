"""The built-in offline text corpus (Python standard-library docstrings)."""

from __future__ import annotations

from circuits.corpora import builtin as corpora
from circuits.corpora import docstrings as dc


def _fake_stdlib(root):
    long = "This docstring is long enough to be kept in the corpus because it has many words in it. "
    (root / "pkg").mkdir()
    (root / "test").mkdir()
    (root / "a.py").write_text(f'"""{long}\n\n    Second   paragraph."""\n\ndef f():\n    """short"""\n')
    (root / "pkg" / "b.py").write_text(f'class C:\n    """{long}"""\n    def m(self):\n        """{long}again"""\n')
    (root / "test" / "t.py").write_text(f'"""{long} from a test suite"""\n')
    (root / "broken.py").write_text("def (:\n")


def test_docstrings_in_fixed_order_tests_and_short_ones_skipped(tmp_path):
    _fake_stdlib(tmp_path)
    docs = list(dc.docstring_documents(tmp_path))
    assert len(docs) == 3  # a.py module, pkg/b.py class + method; no test suite, no short, no broken file
    assert docs[0].endswith("many words in it. Second paragraph.")  # whitespace runs -> one space
    assert all("\n" not in d and len(d) >= dc.MIN_CHARS for d in docs)
    assert not any("test suite" in d for d in docs)


def test_build_records_provenance_and_is_deterministic(tmp_path):
    root = tmp_path / "lib"
    root.mkdir()
    _fake_stdlib(root)
    first = dc.build_docstring_corpus(tmp_path / "one.txt", root)
    second = dc.build_docstring_corpus(tmp_path / "two.txt", root)
    assert first["sha256"] == second["sha256"] and first["documents"] == 3
    assert "PSF-2.0" in first["license"]
    assert (tmp_path / "one.txt").read_text() == (tmp_path / "two.txt").read_text()


def test_builtin_corpus_is_cached_under_circuits_home(circuits_home, monkeypatch):
    calls = []

    def fake_build(out_file, root=None):
        calls.append(out_file)
        out_file.write_text("one document about the stdlib\n")
        return {"documents": 1}

    monkeypatch.setitem(corpora.BUILTIN_CORPORA, "fake-docs", fake_build)
    path = corpora.builtin_corpus_file("fake-docs")
    assert path == circuits_home / "corpora" / "fake-docs.txt" and path.read_text().startswith("one document")
    corpora.builtin_corpus_file("fake-docs")
    assert len(calls) == 1  # cached
    assert corpora.corpus_record("fake-docs") == {"name": "fake-docs", "documents": 1}
    corpora.builtin_corpus_file("fake-docs", rebuild=True)
    assert len(calls) == 2
