"""Save/load round trip (no pickle) and atomic writes."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest

from graphs import GraphError, atomic_write_text, compute_scores, load_graph, prune_graph, save_graph
from graphs.atomic import atomic_open
from tests.graphs.hand_graph import hand_graph
from tests.graphs.random_graph import random_graph


@pytest.mark.parametrize("layout", ["auto", "dense", "csr", "causal"])
def test_round_trip_is_exact(tmp_path, layout):
    graph = random_graph(3)
    graph.feature_labels = {0: "café ⏎ \"quoted\"", 1: ""}
    graph.timing_seconds = {"attribution": 1.25, "total": 2.0}
    path = tmp_path / "g.npz"
    save_graph(graph, path, layout=layout)
    loaded = load_graph(path)
    assert loaded == graph
    np.testing.assert_array_equal(loaded.adjacency, graph.adjacency)  # bit-exact float32
    assert loaded.feature_labels == graph.feature_labels
    # re-pruning the loaded graph gives the same result as pruning the original
    a, b = prune_graph(graph), prune_graph(loaded)
    np.testing.assert_array_equal(a.node_mask, b.node_mask)
    assert compute_scores(graph, a) == compute_scores(loaded, b)


@pytest.mark.parametrize(("layout", "adjacency_keys"),
                         [("dense", {"adjacency"}), ("csr", {"adjacency_data", "adjacency_indices"})])
def test_file_needs_no_pickle(tmp_path, layout, adjacency_keys):
    path = tmp_path / "g.npz"
    save_graph(hand_graph(), path, layout=layout)
    with np.load(path, allow_pickle=False) as npz:
        assert set(npz.files) >= adjacency_keys | {"kind", "metadata", "token_ids"}
        assert all(npz[k].dtype != object for k in npz.files)


def test_auto_layout_picks_csr_for_sparse_adjacency(tmp_path):
    graph = random_graph(0, n_layers=6, n_pos=12, features_per_site=6, density=0.02)
    assert graph.n_edges() * 8 * 4 < graph.adjacency.nbytes
    save_graph(graph, tmp_path / "g.npz")
    with np.load(tmp_path / "g.npz") as npz:
        assert "adjacency_data" in npz.files and "adjacency" not in npz.files
    assert load_graph(tmp_path / "g.npz") == graph


def test_causal_layout_is_exact_and_smaller_than_the_square(tmp_path):
    """A dense-ish graph (most allowed edges nonzero) is stored as the causal block only: every
    edge bit-exact, the file well under the dense square (here under half of it)."""
    graph = random_graph(5, n_layers=6, n_pos=10, features_per_site=6, density=0.9)
    save_graph(graph, tmp_path / "auto.npz")
    save_graph(graph, tmp_path / "dense.npz", layout="dense")
    with np.load(tmp_path / "auto.npz") as npz:
        assert "adjacency_causal" in npz.files and "adjacency" not in npz.files
        assert npz["adjacency_causal"].shape[0] < graph.n_nodes ** 2 / 2
    loaded = load_graph(tmp_path / "auto.npz")
    np.testing.assert_array_equal(loaded.adjacency, graph.adjacency)
    assert loaded == graph
    assert os.path.getsize(tmp_path / "auto.npz") < os.path.getsize(tmp_path / "dense.npz") / 2


def test_causal_values_of_the_wrong_length_are_rejected(tmp_path):
    graph = random_graph(2)
    save_graph(graph, tmp_path / "g.npz", layout="causal")
    with np.load(tmp_path / "g.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["adjacency_causal"] = arrays["adjacency_causal"][:-1]
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(GraphError, match="causal adjacency"):
        load_graph(tmp_path / "bad.npz")


def test_metadata_survives(tmp_path):
    graph = hand_graph()
    save_graph(graph, tmp_path / "g.npz")
    loaded = load_graph(tmp_path / "g.npz")
    assert loaded.model == graph.model and loaded.transcoders == graph.transcoders
    assert loaded.settings == {"max_feature_nodes": None, "batch_size": 4}
    assert loaded.token_strs == ["a", " b"] and loaded.prompt == "a b"


def test_missing_file(tmp_path):
    with pytest.raises(GraphError, match="no graph file"):
        load_graph(tmp_path / "nope.npz")


def test_garbage_file(tmp_path):
    path = tmp_path / "g.npz"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(GraphError, match="not a readable graph file") as info:
        load_graph(path)
    assert "\n" not in str(info.value)


def test_truncated_file(tmp_path):
    path = tmp_path / "g.npz"
    save_graph(random_graph(1), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(GraphError, match="not a readable graph file"):
        load_graph(path)


def test_corrupted_member(tmp_path):
    """Flip bytes inside the stored adjacency: the zip CRC catches it -> GraphError."""
    path = tmp_path / "g.npz"
    save_graph(random_graph(1), path, layout="dense")
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("adjacency.npy")
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + 40
    for k in range(start, start + 32):
        data[k] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(GraphError):
        load_graph(path)


def test_other_npz_is_rejected(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, x=np.zeros(3))
    with pytest.raises(GraphError, match="missing kind"):
        load_graph(path)


def test_wrong_format_tag_is_rejected(tmp_path):
    path = tmp_path / "g.npz"
    save_graph(hand_graph(), path)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["metadata"] = np.array(str(arrays["metadata"]).replace("circuits-graph/1", "other/9"))
    np.savez(path, **arrays)
    with pytest.raises(GraphError, match="format circuits-graph/1"):
        load_graph(path)


def test_tampered_arrays_fail_validation(tmp_path):
    path = tmp_path / "g.npz"
    save_graph(hand_graph(), path, layout="csr")
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["adjacency_data"][0] = np.nan
    np.savez(path, **arrays)
    with pytest.raises(GraphError, match="g.npz: graph adjacency contains NaN"):
        load_graph(path)
    arrays["adjacency_data"][0] = 1.0
    arrays["adjacency_indices"][0] = 10_000  # out of range: caught before anything reads it
    np.savez(path, **arrays)
    with pytest.raises(GraphError, match="not a readable graph file"):
        load_graph(path)


def test_unwritable_paths(tmp_path):
    with pytest.raises(GraphError, match="does not exist"):
        save_graph(hand_graph(), tmp_path / "no" / "such" / "g.npz")
    with pytest.raises(GraphError, match="is a directory"):
        save_graph(hand_graph(), tmp_path)
    if os.geteuid() != 0:  # root ignores permissions
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            with pytest.raises(GraphError, match="cannot write"):
                atomic_write_text(locked / "x.json", "{}")
        finally:
            locked.chmod(0o700)


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "out.json"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(path) as handle:
            handle.write(b"partial")
            raise RuntimeError("boom")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.json"]


def test_atomic_write_replaces_and_keeps_permissions(tmp_path):
    path = tmp_path / "out.json"
    atomic_write_text(path, "one")
    assert (path.stat().st_mode & 0o777) == 0o644
    path.chmod(0o600)
    atomic_write_text(path, "two")
    assert path.read_text() == "two" and (path.stat().st_mode & 0o777) == 0o600
