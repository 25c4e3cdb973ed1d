"""Corpora shipped as package data: text one of our generators made once, kept so first use
need not make it again.

    circuits/corpora/shipped/<name>.txt.xz    the corpus file, xz-compressed
    circuits/corpora/shipped/<name>.json      its provenance record (the generator's settings, sha256)

`unpack_shipped(name, out_file)` writes the text and checks it against the record's sha256 (a
damaged copy is refused, never used). The generator stays the way to make and verify it:
`circuits models corpus NAME --rebuild --regenerate` runs it and reports whether its text equals
the shipped one. `ship_corpus` is the maintainers' way to replace a shipped corpus.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import shutil
from pathlib import Path

from circuits.errors import CircuitsError, write_output

SHIPPED_DIR = Path(__file__).with_name("shipped")
_CHUNK = 1 << 20


def shipped_record(name: str) -> dict | None:
    """The shipped corpus's record, or None when `name` is not shipped."""
    record, text = SHIPPED_DIR / f"{name}.json", SHIPPED_DIR / f"{name}.txt.xz"
    if not (record.is_file() and text.is_file()):
        return None
    return json.loads(record.read_text(encoding="utf-8"))


def unpack_shipped(name: str, out_file: Path) -> dict | None:
    """Write the shipped text of `name` into out_file and return its record (with `shipped`: how
    it was obtained); None when nothing is shipped under that name. A copy whose sha256 differs
    from its record is refused with one line and out_file removed."""
    record = shipped_record(name)
    if record is None:
        return None
    digest = hashlib.sha256()
    with lzma.open(SHIPPED_DIR / f"{name}.txt.xz", "rb") as src, Path(out_file).open("wb") as dst:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            dst.write(chunk)
    if digest.hexdigest() != record.get("sha256"):
        Path(out_file).unlink(missing_ok=True)
        raise CircuitsError(f"the shipped corpus '{name}' is damaged (sha256 {digest.hexdigest()[:12]}..., its record "
                            f"says {str(record.get('sha256'))[:12]}...): reinstall the package, or make it with "
                            f"`circuits models corpus {name} --rebuild --regenerate`")
    return {**record, "shipped": f"unpacked from the package ({SHIPPED_DIR.name}/{name}.txt.xz), sha256 checked"}


def ship_corpus(name: str, text_file: Path, record: dict) -> Path:
    """Maintainers: store text_file (whose record the generator returned) as the shipped `name`."""
    digest = hashlib.sha256(Path(text_file).read_bytes()).hexdigest()
    if digest != record.get("sha256"):
        raise CircuitsError(f"{text_file} does not match its record (sha256 {digest[:12]}...)")
    SHIPPED_DIR.mkdir(exist_ok=True)
    target = SHIPPED_DIR / f"{name}.txt.xz"
    with Path(text_file).open("rb") as src, lzma.open(target, "wb", preset=9 | lzma.PRESET_EXTREME) as dst:
        shutil.copyfileobj(src, dst, _CHUNK)
    write_output(SHIPPED_DIR / f"{name}.json", json.dumps({"name": name, **record}, indent=2) + "\n", "corpus record")
    return target
