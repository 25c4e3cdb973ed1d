"""Tensors of a safetensors or .npz file, memory-mapped: nothing is read until it is indexed.

`map_tensors(path)` returns {name: tensor} whose storage is a private read-only mapping of the file
(numpy copy-on-write mmap, never written), in the file's own dtype (bf16 / fp16 stay 2 bytes).
Indexing rows of such a tensor reads only the pages of those rows; `release(path)` drops a file's
resident pages from this process (they stay in the OS page cache), so reading one layer's encoder
after another does not accumulate them in RSS.

safetensors: 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}},
then the data. npz: a zip of .npy members; stored (uncompressed) members are mapped in place,
compressed ones are read into memory (np.savez_compressed files cannot be mapped).
"""

from __future__ import annotations

import json
import mmap
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch

from transcoders.errors import TranscoderError

# safetensors dtype -> (numpy storage dtype, torch dtype); 2-byte floats are stored as uint16 and viewed
_ST_DTYPES = {
    "F64": (np.float64, torch.float64), "F32": (np.float32, torch.float32),
    "F16": (np.uint16, torch.float16), "BF16": (np.uint16, torch.bfloat16),
    "I64": (np.int64, torch.int64), "I32": (np.int32, torch.int32), "I16": (np.int16, torch.int16),
    "I8": (np.int8, torch.int8), "U8": (np.uint8, torch.uint8), "BOOL": (np.bool_, torch.bool),
}
_MAPS: dict[str, list[np.memmap]] = {}  # path -> the mappings made of it (for release)


def _unreadable(path: Path, why: str) -> TranscoderError:
    return TranscoderError(f"transcoder file {path} is unreadable ({why}): download it again")


def _memmap(path: Path, dtype, offset: int, shape: tuple[int, ...]) -> np.memmap | np.ndarray:
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype=dtype)
    arr = np.memmap(path, dtype=dtype, mode="c", offset=offset, shape=shape)
    _MAPS.setdefault(str(path), []).append(arr)
    return arr


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise _unreadable(path, "truncated header")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100_000_000:
            raise _unreadable(path, "bad header length")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _unreadable(path, "bad JSON header") from None
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            np_dtype, torch_dtype = _ST_DTYPES[info["dtype"]]
            start, end = (int(x) for x in info["data_offsets"])
            shape = tuple(int(s) for s in info["shape"])
        except (KeyError, TypeError, ValueError):
            raise _unreadable(path, f"tensor '{name}' has an unsupported entry") from None
        nbytes = int(np.prod(shape)) * np.dtype(np_dtype).itemsize
        if end - start != nbytes or 8 + n + end > size:
            raise _unreadable(path, f"tensor '{name}' runs past the end of the file")
        arr = _memmap(path, np_dtype, 8 + n + start, shape)
        out[name] = torch.from_numpy(arr).view(torch_dtype) if arr.dtype == np.uint16 else torch.from_numpy(arr)
    return out


def _npy_header(fh) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    fmt = np.lib.format
    version = fmt.read_magic(fh)
    read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape, fortran, dtype = read(fh)
    return np.dtype(dtype), tuple(shape), fortran, fh.tell()


def _npz(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise _unreadable(path, type(exc).__name__) from None
    with zf, open(path, "rb") as raw:
        for info in zf.infolist():
            name = info.filename.removesuffix(".npy")
            if info.compress_type != zipfile.ZIP_STORED:
                with zf.open(info) as fh:
                    arr = np.lib.format.read_array(fh, allow_pickle=False)
                out[name] = torch.from_numpy(np.ascontiguousarray(arr))
                continue
            raw.seek(info.header_offset)
            local = raw.read(30)
            if local[:4] != b"PK\x03\x04":
                raise _unreadable(path, f"member {info.filename} has a bad local header")
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            data_start = info.header_offset + 30 + name_len + extra_len
            raw.seek(data_start)
            try:
                dtype, shape, fortran, header_len = _npy_header(raw)
            except ValueError:
                raise _unreadable(path, f"member {info.filename} is not a .npy array") from None
            if dtype.hasobject:
                raise _unreadable(path, f"member {info.filename} holds Python objects")
            arr = _memmap(path, dtype, header_len, shape[::-1] if fortran else shape)
            out[name] = torch.from_numpy(arr.T if fortran else arr)
    return out


def map_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """{name: memory-mapped tensor} of a .safetensors or .npz file (one line naming it if it cannot be read)."""
    p = Path(path)
    if not p.is_file():
        raise TranscoderError(f"missing transcoder file {p}")
    try:
        return _npz(p) if p.suffix == ".npz" else _safetensors(p)
    except OSError as exc:
        raise _unreadable(p, type(exc).__name__) from None


def release(path: str | Path) -> None:
    """Drop this process's resident pages of every mapping of `path` (the mappings stay valid)."""
    for arr in _MAPS.get(str(path), []):
        mm = getattr(arr, "_mmap", None)
        if mm is not None and hasattr(mm, "madvise"):
            try:
                mm.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):
                pass


def head_bytes(t: torch.Tensor, n_bytes: int = 1 << 20) -> bytes:
    """The first `n_bytes` of `t` as float32 bytes (only that many elements are read)."""
    n = n_bytes // 4
    if t.dim() > 1:  # only the leading rows that hold the first n elements (no copy of the rest)
        row = max(1, int(np.prod(t.shape[1:])))
        t = t[: -(-n // row)]
    return t.reshape(-1)[:n].detach().to("cpu", torch.float32).numpy().tobytes()
