"""Save and load a full (unpruned) Graph as one .npz file: no pickle anywhere.

Layout (np.savez, uncompressed: float32 weights hardly compress and zlib on a 10k-node graph
takes tens of seconds): the node table, logit probabilities and weights, token ids; the adjacency
either dense (`adjacency`) or, when that is under a quarter of the size, as CSR (`adjacency_data` float32,
`adjacency_indices` int32, `adjacency_indptr` int64, row = target); and `metadata`, a 0-d unicode
array holding one JSON document with the rest (format tag, adjacency layout, prompt, token
strings, logit labels, n_layers, model, transcoders, settings, timing, feature labels).
np.load(..., allow_pickle=False) reads it back; the round trip is exact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from scipy import sparse

from graphs.atomic import atomic_open
from graphs.errors import GraphError
from graphs.graph import NODE_TABLE_DTYPES, Graph

FORMAT = "circuits-graph/1"
_ARRAYS = (*NODE_TABLE_DTYPES, "logit_probabilities", "logit_weights", "token_ids")
_CSR = ("adjacency_data", "adjacency_indices", "adjacency_indptr")


def save_graph(graph: Graph, path: str | os.PathLike, layout: str = "auto") -> None:
    """Write `graph` to `path` (.npz), atomically. layout: "auto" (CSR when under a quarter of
    the dense size), "dense" or "csr"."""
    if layout not in ("auto", "dense", "csr"):
        raise GraphError(f"unknown adjacency layout {layout!r} (auto, dense or csr)")
    arrays = {name: getattr(graph, name) for name in _ARRAYS if name != "token_ids"}
    arrays["token_ids"] = np.asarray(graph.token_ids, dtype=np.int64)
    csr_bytes = graph.n_edges() * 8 + graph.n_nodes * 8
    # CSR only when it is much smaller: converting costs more CPU than writing the dense bytes
    sparse_layout = layout == "csr" or (layout == "auto" and 4 * csr_bytes < graph.adjacency.nbytes)
    if sparse_layout:
        csr = sparse.csr_array(graph.adjacency)
        arrays["adjacency_data"] = csr.data.astype(np.float32)
        arrays["adjacency_indices"] = csr.indices.astype(np.int32)
        arrays["adjacency_indptr"] = csr.indptr.astype(np.int64)
    else:
        arrays["adjacency"] = graph.adjacency
    metadata = {
        "format": FORMAT,
        "adjacency_layout": "csr" if sparse_layout else "dense",
        "prompt": graph.prompt,
        "token_strs": graph.token_strs,
        "logit_labels": graph.logit_labels,
        "n_layers": graph.n_layers,
        "model": graph.model,
        "transcoders": graph.transcoders,
        "settings": graph.settings,
        "timing_seconds": graph.timing_seconds,
        "feature_labels": {str(k): v for k, v in graph.feature_labels.items()},
    }
    arrays["metadata"] = np.array(json.dumps(metadata, ensure_ascii=False, allow_nan=False))
    with atomic_open(path) as handle:
        np.savez(handle, **arrays)


def load_graph(path: str | os.PathLike) -> Graph:
    """Read a graph written by save_graph. Any problem -> GraphError with one line."""
    path = Path(path)
    if not path.is_file():
        raise GraphError(f"no graph file at {path}" + (" (it is a directory)" if path.is_dir() else ""))
    _check_is_npz(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in (*_ARRAYS, "metadata") if k not in npz.files]
            if missing:
                raise GraphError(f"{path} is not a graph file (missing {', '.join(missing)})")
            metadata = json.loads(str(npz["metadata"]))
            if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
                found = metadata.get("format") if isinstance(metadata, dict) else None
                raise GraphError(f"{path} is not a graph file of format {FORMAT} (found {found!r})")
            arrays = {k: npz[k] for k in _ARRAYS}
            arrays["adjacency"] = _read_adjacency(npz, metadata, n_nodes=arrays["kind"].shape[0])
    except GraphError:
        raise
    except Exception as err:  # a corrupted file fails in many ways (zip, zlib, npy header, JSON)
        raise GraphError(f"{path} is not a readable graph file ({_one_line(err)})") from None
    try:
        return Graph(
            **{k: arrays[k] for k in _ARRAYS if k != "token_ids"},
            adjacency=arrays["adjacency"],
            token_ids=arrays["token_ids"].tolist(),
            prompt=metadata["prompt"],
            token_strs=metadata["token_strs"],
            logit_labels=metadata["logit_labels"],
            n_layers=metadata["n_layers"],
            model=metadata["model"],
            transcoders=metadata["transcoders"],
            settings=metadata["settings"],
            timing_seconds=metadata["timing_seconds"],
            feature_labels={int(k): v for k, v in metadata["feature_labels"].items()},
        )
    except GraphError as err:
        raise GraphError(f"{path}: {err}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise GraphError(f"{path} has bad graph metadata ({_one_line(err)})") from None


WANTED = "a full graph is the .npz written by `circuits trace --full`"


def _check_is_npz(path: Path) -> None:
    """Refuse, in words, a file that is not an .npz archive (viewer JSON, GraphML, anything)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)
    except OSError as err:
        raise GraphError(f"cannot read {path}: {err.strerror or err}") from None
    if head.startswith(b"PK\x03\x04"):
        return
    text = head.lstrip()
    kind = ("viewer JSON" if text.startswith(b"{") else "GraphML/XML" if text.startswith(b"<")
            else "an empty file" if not head else "not a readable graph file")
    raise GraphError(f"{path} is {kind}" + ("" if kind.startswith("not") else ", not a full graph")
                     + f": {WANTED}")


def _read_adjacency(npz, metadata: dict, n_nodes: int) -> np.ndarray:
    """float32 [n_nodes, n_nodes] from either layout."""
    layout = metadata.get("adjacency_layout")
    if layout == "dense":
        return npz["adjacency"]
    if layout == "csr":
        data, indices, indptr = (npz[k] for k in _CSR)
        csr = sparse.csr_array((data, indices, indptr), shape=(n_nodes, n_nodes))
        csr.check_format(full_check=True)  # index ranges, before anything reads through them
        return csr.toarray()
    raise GraphError(f"unknown adjacency layout {layout!r}")


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    if "pickle" in text:  # numpy's advice to allow pickles must never reach a user: it runs code
        return "it holds Python objects, which this tool never loads"
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__
