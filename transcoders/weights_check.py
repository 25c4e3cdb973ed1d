"""Is a transcoder's data usable? Floating-point weights (cheap: dtypes only) and finite weights
(one pass over every tensor, chunk by chunk from the mapped files, so no more memory than a chunk).

Every load checks both (`transcoders.formats.load_transcoder`), so trace, intervene, demo, serve,
fidelity and `transcoders info` accept and refuse the same folders. The finite pass reads every
weight once; `check_finite_once` remembers files already found finite, in this process and, given a
folder, across processes: a stamp named by the files' (path, size, mtime, inode), so a changed file
is read again.

A transcoder file with integer weights would be cast silently and give wrong answers; NaN or
infinite weights give NaN metrics and graphs. Both are one-line TranscoderErrors naming the file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from transcoders.checkpoint import atomic_write_bytes
from transcoders.errors import TranscoderError
from transcoders.formats_read import LayerViews

_TENSORS = ("enc", "dec", "b_enc", "b_dec", "threshold", "skip")
ROWS_PER_CHUNK = 4096


def _where(lv: LayerViews, layer: int) -> str:
    return ", ".join(str(f) for f in lv.files) or f"layer {layer}"


def check_dtypes(layers: list[LayerViews]) -> None:
    """Every weight tensor is floating point."""
    for layer, lv in enumerate(layers):
        for name in _TENSORS:
            t = getattr(lv, name)
            if t is not None and not t.is_floating_point():
                raise TranscoderError(f"{_where(lv, layer)}: '{name}' of layer {layer} is {str(t.dtype)[6:]}, "
                                      "not floating point: not usable transcoder weights")


def check_finite(layers: list[LayerViews]) -> None:
    """Every weight is finite (reads each tensor once, in row chunks)."""
    from transcoders.tensor_files import release

    check_dtypes(layers)
    for layer, lv in enumerate(layers):
        for name in _TENSORS:
            t = getattr(lv, name)
            if t is None:
                continue
            rows = t.reshape(1, -1) if t.dim() < 2 else t
            for start in range(0, rows.shape[0], ROWS_PER_CHUNK):
                if not torch.isfinite(rows[start:start + ROWS_PER_CHUNK]).all():
                    raise TranscoderError(f"{_where(lv, layer)}: '{name}' of layer {layer} has NaN or infinite "
                                          "weights: the transcoder is corrupt (train it again or download it again)")
        for path in lv.files:
            release(path)


_CHECKED: set[str] = set()  # keys of file sets found finite in this process


def _files_key(layers: list[LayerViews]) -> str:
    ids = []
    for f in sorted({Path(p).resolve() for lv in layers for p in lv.files}):
        st = f.stat()
        ids.append([str(f), st.st_size, st.st_mtime_ns, st.st_ino])
    return json.dumps(ids)


def check_finite_once(layers: list[LayerViews], stamp_dir: Path | None = None) -> None:
    """`check_finite`, skipped for files already found finite (module doc); stamps go in `stamp_dir`."""
    check_dtypes(layers)
    key = _files_key(layers)
    stamp = None
    if stamp_dir is not None:
        stamp = Path(stamp_dir) / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"
        try:
            if stamp.read_text() == key:
                _CHECKED.add(key)
        except (OSError, UnicodeDecodeError):
            pass
    if key in _CHECKED:
        return
    check_finite(layers)
    _CHECKED.add(key)
    if stamp is not None:
        try:  # only a cache: a folder we cannot write means the next process checks again
            stamp.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(stamp, key.encode())
        except (OSError, TranscoderError):
            pass
