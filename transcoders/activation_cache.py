"""Memory-mapped on-disk activation cache: one model pass, reused by several epochs and runs.

Layout of a cache folder:
  x.npy      [N, L, d] input-hook activations (numpy .npy, opened with mmap)
  y.npy      [N, L, d] output-hook activations
  meta.json  {source_id, n_tokens, n_layers, d_model, dtype, input_hook, output_hook, seq_len} (written last)
dtype "bfloat16" (the default: half the disk and read traffic of float32) is stored as the raw 16-bit
patterns in an int16 .npy (numpy has no bfloat16) and read back through torch's bfloat16 view.
Tokens are stored group by group as the source produced them; `CachedActivationSource` reads groups of consecutive rows and the
shuffle buffer permutes them, wrapping around at the end (epochs).
  .circuits-activation-cache  marker: this folder was made by this tool
The folder is built under a temporary name and renamed, so a half-written cache never loads.
A --cache-dir that holds anything else (the user's files) is refused, never emptied: only a folder
with our marker (or our meta.json) and nothing but our files is replaced.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from transcoders.errors import TranscoderError

META = "meta.json"
MARKER = ".circuits-activation-cache"
_OURS = {"x.npy", "y.npy", META, MARKER}


def check_cache_dir(cache_dir: Path) -> None:
    """Before any work: `cache_dir` is new, empty, or an activation cache this tool wrote."""
    from safeio import OutputError, check_output_dir

    cache_dir = Path(cache_dir)
    try:
        check_output_dir(cache_dir, "--cache-dir")
    except OutputError as err:
        raise TranscoderError(str(err)) from None
    if cache_dir.is_dir() and not _is_ours(cache_dir):
        raise TranscoderError(f"--cache-dir {cache_dir} holds files that are not an activation cache of this "
                              "tool; give a new or empty folder (nothing was changed)")


def _is_ours(folder: Path) -> bool:
    """Empty, or only our files with our marker or our meta.json."""
    names = {p.name for p in folder.iterdir()}
    if not names:
        return True
    return names <= _OURS and (MARKER in names or read_cache_meta(folder) is not None) \
        and all((folder / n).is_file() and not (folder / n).is_symlink() for n in names)


def _remove_ours(folder: Path) -> None:
    """Remove a folder checked by _is_ours: our files one by one, then the (now empty) folder."""
    if not _is_ours(folder):
        raise TranscoderError(f"{folder} holds files that are not an activation cache of this tool; "
                              "nothing was removed")
    for name in _OURS:
        (folder / name).unlink(missing_ok=True)
    folder.rmdir()


def read_cache_meta(cache_dir: Path) -> dict | None:
    try:
        return json.loads((Path(cache_dir) / META).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def cache_matches(cache_dir: Path, source_id: str, input_hook: str, output_hook: str, n_tokens: int = 0,
                  seq_len: int | None = None, dtype: str | None = None) -> bool:
    """An existing cache of the same model, corpus, hooks (and, when given, window length and
    storage dtype) with at least n_tokens rows. A cache that recorded no window length (built
    outside a training run, or before it was recorded) matches any."""
    meta = read_cache_meta(cache_dir)
    return bool(meta) and meta.get("source_id") == source_id and meta.get("input_hook") == input_hook \
        and meta.get("output_hook") == output_hook and meta.get("n_tokens", 0) >= n_tokens \
        and (seq_len is None or meta.get("seq_len") in (None, seq_len)) \
        and (dtype is None or meta.get("dtype", "float32") == dtype)


def check_room(n_rows: int, n_layers: int, d_model: int, bytes_per_value: int, cache_dir: Path | None) -> None:
    """Before collecting: refuse, in one line, activations that cannot fit (in memory when
    cache_dir is None, else on the cache's disk), instead of running for hours and failing."""
    import shutil

    need = 2 * n_rows * n_layers * d_model * bytes_per_value  # x and y
    if cache_dir is None:
        have, where, hint = _available_memory(), "memory", "lower --activation-tokens or use --cache-dir"
    else:
        ancestor = Path(cache_dir).absolute()
        while not ancestor.exists():
            ancestor = ancestor.parent
        have, where, hint = shutil.disk_usage(ancestor).free, f"free disk at {ancestor}", "lower --activation-tokens or --tokens"
    if have is not None and need > have:
        raise TranscoderError(f"{n_rows} activation rows need {need / 2**30:.1f} GiB but only "
                              f"{have / 2**30:.1f} GiB of {where} is available; {hint}")


def _available_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def collect_progress(enabled: bool, total: int):
    """A progress callback (rows done, rows wanted) drawing a bar on stderr, or None."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="tok", unit_scale=True, desc="collect activations", dynamic_ncols=True)

    def update(done: int, wanted: int) -> None:
        bar.update(done - bar.n)
        if done >= wanted:
            bar.close()

    return update


def _stored(t: torch.Tensor, dtype: str) -> np.ndarray:
    """A float tensor as the array stored for `dtype` (bfloat16: its bit patterns as int16)."""
    if dtype == "bfloat16":
        return t.to(torch.bfloat16).view(torch.int16).numpy()
    return t.numpy().astype(dtype, copy=False)


def _loaded(a: np.ndarray, dtype: str) -> torch.Tensor:
    """Stored rows back as a float32 tensor."""
    a = np.ascontiguousarray(a)
    if dtype == "bfloat16":
        return torch.from_numpy(a).view(torch.bfloat16).float()
    return torch.from_numpy(a.astype(np.float32, copy=False))


def build_activation_cache(source, n_tokens: int, cache_dir: Path, source_id: str,
                           dtype: str = "bfloat16", progress=None, seq_len: int | None = None) -> Path:
    """Write `n_tokens` rows from `source` (a ModelActivationSource) into `cache_dir`, stored as
    `dtype` ("bfloat16" or "float32")."""
    cache_dir = Path(cache_dir)
    check_cache_dir(cache_dir)
    tmp = cache_dir.with_name(f".{cache_dir.name}.building")
    if tmp.exists():
        _remove_ours(tmp)
    tmp.mkdir(parents=True)
    (tmp / MARKER).write_text("activation cache written by circuits\n")
    start, written = source.start_position(), 0
    x_mm = y_mm = None
    while written < n_tokens:
        x, y, start = source.read_group(start)
        if x_mm is None:
            shape = (n_tokens, x.shape[1], x.shape[2])
            np_dtype = np.int16 if dtype == "bfloat16" else dtype
            x_mm = np.lib.format.open_memmap(tmp / "x.npy", mode="w+", dtype=np_dtype, shape=shape)
            y_mm = np.lib.format.open_memmap(tmp / "y.npy", mode="w+", dtype=np_dtype, shape=shape)
        take = min(x.shape[0], n_tokens - written)
        x_mm[written:written + take] = _stored(x[:take], dtype)
        y_mm[written:written + take] = _stored(y[:take], dtype)
        written += take
        if progress is not None:
            progress(written, n_tokens)
    x_mm.flush()
    y_mm.flush()
    meta = {"source_id": source_id, "n_tokens": n_tokens, "n_layers": x_mm.shape[1],
            "d_model": x_mm.shape[2], "dtype": dtype,
            "input_hook": source.input_hook, "output_hook": source.output_hook, "seq_len": seq_len}
    del x_mm, y_mm
    (tmp / META).write_text(json.dumps(meta, indent=2))
    if cache_dir.exists():
        _remove_ours(cache_dir)
    tmp.rename(cache_dir)
    return cache_dir


class CachedActivationSource:
    """Groups of `group_tokens` consecutive rows of cached activations; positions are row offsets.
    The rows come from a cache folder (memory-mapped) or from arrays in memory (`in_memory`)."""

    def __init__(self, cache_dir: Path | None, group_tokens: int, arrays=None, hooks=None):
        self.dtype = "float32"
        if arrays is None:
            meta = read_cache_meta(cache_dir)
            if meta is None:
                raise TranscoderError(f"activation cache {cache_dir} is incomplete (no meta.json): delete it")
            hooks = (meta["input_hook"], meta["output_hook"])
            self.dtype = meta.get("dtype", "float32")
            arrays = (np.load(Path(cache_dir) / "x.npy", mmap_mode="r"), np.load(Path(cache_dir) / "y.npy", mmap_mode="r"))
        self.input_hook, self.output_hook = hooks
        self.x, self.y = arrays
        self.n = self.x.shape[0]
        self.group_tokens = min(group_tokens, self.n)
        self.model_seconds = 0.0

    @classmethod
    def in_memory(cls, source, n_tokens: int, group_tokens: int, dtype=np.float16,
                  progress=None) -> "CachedActivationSource":
        """Run `source` (a ModelActivationSource) for `n_tokens` rows once and keep them in memory;
        progress(rows done, n_tokens) is called after each group."""
        arrays, start, n = None, source.start_position(), 0
        while n < n_tokens:
            x, y, start = source.read_group(start)
            if arrays is None:  # filled in place: one copy of the rows, never two (no concatenation)
                arrays = (np.empty((n_tokens, *x.shape[1:]), dtype), np.empty((n_tokens, *y.shape[1:]), dtype))
            take = min(x.shape[0], n_tokens - n)
            arrays[0][n:n + take] = x[:take].numpy()
            arrays[1][n:n + take] = y[:take].numpy()
            n += take
            if progress is not None:
                progress(n, n_tokens)
        out = cls(None, group_tokens, arrays, (source.input_hook, source.output_hook))
        out.model_seconds = source.model_seconds
        return out

    def start_position(self) -> dict:
        return {"row": 0}

    def read_group(self, start: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
        row = int(start["row"]) % self.n
        rows = np.arange(row, row + self.group_tokens) % self.n
        x, y = _loaded(self.x[rows], self.dtype), _loaded(self.y[rows], self.dtype)
        return x, y, {"row": int((row + self.group_tokens) % self.n)}
