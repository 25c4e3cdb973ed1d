"""An offline real-text corpus: the docstrings of Python's standard library.

Every Python installation ships its standard library as source, so this text exists on any
machine that can run the engine, without a network. Docstrings are English prose about programs
(with some code), written by people, under the Python Software Foundation License (PSF-2.0,
https://docs.python.org/3/license.html), which permits copying and derived works.

    build_docstring_corpus(out_file)   # one docstring per line, deterministic order

Module, class and function docstrings of every `.py` file under the standard library directory
(`sysconfig.get_paths()["stdlib"]`), files in sorted order, parsed with `ast` (nothing is
imported); test suites, `site-packages` and the IDLE / lib2to3 / turtledemo trees are skipped;
docstrings shorter than MIN_CHARS characters are dropped; whitespace runs become one space so a
docstring fits the one-document-per-line format of `--corpus FILE`.
"""

from __future__ import annotations

import ast
import hashlib
import re
import sys
import sysconfig
import warnings
from pathlib import Path

MIN_CHARS = 80
SKIP_DIRS = {"test", "tests", "site-packages", "dist-packages", "idlelib", "lib2to3", "turtledemo",
             "__pycache__", "ensurepip", "venv"}
LICENSE = "PSF-2.0 (Python Software Foundation License), https://docs.python.org/3/license.html"


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _source_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py")
                  if not SKIP_DIRS.intersection(p.relative_to(root).parts[:-1]))


def _docstrings(source: str) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escape sequences in old sources
        tree = ast.parse(source)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                out.append(doc)
    return out


def docstring_documents(root: Path | None = None):
    """Yield the corpus documents (one normalised docstring each), in a fixed order."""
    root = root or stdlib_dir()
    for path in _source_files(root):
        try:
            source = path.read_text(encoding="utf-8")
            docs = _docstrings(source)
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        for doc in docs:
            text = re.sub(r"\s+", " ", doc).strip()
            if len(text) >= MIN_CHARS:
                yield text


def build_docstring_corpus(out_file: Path, root: Path | None = None) -> dict:
    """Write the corpus to out_file (one document per line); returns its provenance record."""
    root = root or stdlib_dir()
    digest = hashlib.sha256()
    n_docs = n_chars = 0
    with Path(out_file).open("w", encoding="utf-8") as f:
        for text in docstring_documents(root):
            f.write(text + "\n")
            digest.update(text.encode() + b"\n")
            n_docs += 1
            n_chars += len(text)
    return {"source": f"docstrings of the Python {sys.version.split()[0]} standard library at {root}",
            "license": LICENSE, "documents": n_docs, "characters": n_chars,
            "sha256": digest.hexdigest()}
