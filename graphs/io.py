"""Save and load a full (unpruned) Graph as one .npz file: no pickle anywhere.

Layout (np.savez, uncompressed: float32 weights hardly compress and zlib on a 10k-node graph
takes tens of seconds): the node table, logit probabilities and weights, token ids; the adjacency
in the smallest of three layouts (`auto`):
- `causal`: only the targets x sources block the causal order allows, `adjacency_causal` float32
  [n_allowed]: for each feature or logit row in node order, the entries of the sources with a lower
  layer and a position not after the target's, in column order. Every other entry of a valid Graph
  is zero, so no index is needed and the round trip is exact; about a quarter of the dense square.
- `csr` (`adjacency_data` float32, `adjacency_indices` int32, `adjacency_indptr` int64, row =
  target): when most allowed edges are zero;
- `dense` (`adjacency`), the square; files written before the other layouts existed use it.
With attention results (circuits trace --qk): `attention_target`, `attention_source` int64 [E],
`attention_loadings` float32 [E, L, H], `attention_remainder` float32 [E] (graphs.attention), the
explained heads in the metadata JSON under "attention"; and `metadata`, a 0-d unicode array holding one JSON document with the rest (format tag, adjacency
layout, prompt, token strings, logit labels, n_layers, model, transcoders, settings, timing,
feature labels).
np.load(..., allow_pickle=False) reads it back; the round trip is exact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from scipy import sparse

from graphs.atomic import atomic_open
from graphs.attention import attention_arrays, attention_metadata, read_attention
from graphs.errors import GraphError
from graphs.graph import _ROW_BLOCK, NODE_TABLE_DTYPES, Graph, _target_nodes

FORMAT = "circuits-graph/1"
_ARRAYS = (*NODE_TABLE_DTYPES, "logit_probabilities", "logit_weights", "token_ids")
_CSR = ("adjacency_data", "adjacency_indices", "adjacency_indptr")
LAYOUTS = ("auto", "dense", "csr", "causal")


def _allowed_blocks(graph: Graph):
    """(row slice of `edges`, bool mask [rows, n_sources]) over the target rows (features, then
    logits), in row blocks: the entries the causal order allows (source layer below the target's,
    position not after it). A logit node is never a source, so no allowed entry lies outside."""
    targets = graph.target_nodes()
    src_layer, src_pos = graph.layer[:graph.n_sources], graph.position[:graph.n_sources]
    for start in range(0, len(targets), _ROW_BLOCK):
        rows = targets[start:start + _ROW_BLOCK]
        mask = (src_layer[None, :] < graph.layer[rows, None]) & (src_pos[None, :] <= graph.position[rows, None])
        yield slice(start, start + len(rows)), mask


def _pack_causal(graph: Graph) -> np.ndarray:
    return np.concatenate([graph.edges[rows][mask] for rows, mask in _allowed_blocks(graph)] or
                          [np.zeros(0, np.float32)]).astype(np.float32, copy=False)


def _n_allowed(graph: Graph) -> int:
    return sum(int(mask.sum()) for _, mask in _allowed_blocks(graph))


def _unpack_causal(graph_like: Graph, values: np.ndarray) -> np.ndarray:
    """float32 [n_targets, n_sources] from the packed allowed entries."""
    if values.dtype != np.float32 or values.ndim != 1 or values.shape[0] != _n_allowed(graph_like):
        raise GraphError(f"causal adjacency has {values.shape} {values.dtype} values, expected "
                         f"({_n_allowed(graph_like)},) float32")
    edges = np.zeros((graph_like.n_targets, graph_like.n_sources), dtype=np.float32)
    offset = 0
    for rows, mask in _allowed_blocks(graph_like):
        count = int(mask.sum())
        edges[rows][mask] = values[offset:offset + count]
        offset += count
    return edges


def _csr_square(graph: Graph) -> sparse.csr_array:
    """The all-nodes square in CSR (row = target node), built from `edges` without the square."""
    csr = sparse.csr_array(graph.edges)
    nnz_per_node = np.zeros(graph.n_nodes, dtype=np.int64)
    nnz_per_node[graph.target_nodes()] = np.diff(csr.indptr)
    indptr = np.concatenate([[0], np.cumsum(nnz_per_node)])
    return sparse.csr_array((csr.data, csr.indices, indptr), shape=(graph.n_nodes, graph.n_nodes))


def save_graph(graph: Graph, path: str | os.PathLike, layout: str = "auto") -> None:
    """Write `graph` to `path` (.npz), atomically. layout: "auto" (the smallest file), "dense",
    "csr" or "causal" (see the module docstring)."""
    if layout not in LAYOUTS:
        raise GraphError(f"unknown adjacency layout {layout!r} ({', '.join(LAYOUTS)})")
    arrays = {name: getattr(graph, name) for name in _ARRAYS if name != "token_ids"}
    arrays["token_ids"] = np.asarray(graph.token_ids, dtype=np.int64)
    if layout == "auto":
        sizes = {"csr": graph.n_edges() * 8 + graph.n_nodes * 8, "causal": _n_allowed(graph) * 4,
                 "dense": graph.n_nodes ** 2 * 4}
        layout = min(sizes, key=sizes.get)
    if layout == "csr":
        csr = _csr_square(graph)
        arrays["adjacency_data"] = csr.data.astype(np.float32)
        arrays["adjacency_indices"] = csr.indices.astype(np.int32)
        arrays["adjacency_indptr"] = csr.indptr.astype(np.int64)
    elif layout == "causal":
        arrays["adjacency_causal"] = _pack_causal(graph)
    else:
        arrays["adjacency"] = graph.dense_adjacency()
    metadata = {
        "format": FORMAT,
        "adjacency_layout": layout,
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
    if graph.attention is not None:
        arrays.update(attention_arrays(graph.attention))
        metadata["attention"] = attention_metadata(graph.attention)
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
            adjacency_or_edges = _read_adjacency(npz, metadata, arrays)
            attention = read_attention(npz, metadata.get("attention"))
    except GraphError:
        raise
    except Exception as err:  # a corrupted file fails in many ways (zip, zlib, npy header, JSON)
        raise GraphError(f"{path} is not a readable graph file ({_one_line(err)})") from None
    try:
        return Graph(
            **{k: arrays[k] for k in _ARRAYS if k != "token_ids"},
            **adjacency_or_edges,
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
            attention=attention,
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


def _read_adjacency(npz, metadata: dict, arrays: dict) -> dict:
    """{"edges": [n_targets, n_sources]} or {"adjacency": the square, dense or CSR} from any
    layout (Graph checks a square's entries outside targets x sources and keeps the block)."""
    layout = metadata.get("adjacency_layout")
    n_nodes = arrays["kind"].shape[0]
    if layout == "dense":
        return {"adjacency": npz["adjacency"]}
    if layout == "csr":
        data, indices, indptr = (npz[k] for k in _CSR)
        csr = sparse.csr_array((data, indices, indptr), shape=(n_nodes, n_nodes))
        csr.check_format(full_check=True)  # index ranges, before anything reads through them
        return {"adjacency": csr}
    if layout == "causal":
        return {"edges": _unpack_causal(_NodeTable(arrays), npz["adjacency_causal"])}
    raise GraphError(f"unknown adjacency layout {layout!r}")


class _NodeTable:
    """What _allowed_blocks reads of a graph, from the raw arrays of a file (before validation)."""

    def __init__(self, arrays: dict):
        self.kind, self.layer, self.position = arrays["kind"], arrays["layer"], arrays["position"]
        self.n_nodes = int(self.kind.shape[0])
        self._targets = _target_nodes(self.kind)
        self.n_targets = int(self._targets.shape[0])
        self.n_sources = int(np.searchsorted(self.kind, 3))  # before the logits (kind 3)

    def target_nodes(self) -> np.ndarray:
        return self._targets


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    if "pickle" in text:  # numpy's advice to allow pickles must never reach a user: it runs code
        return "it holds Python objects, which this tool never loads"
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__
