"""Graph inputs that must not give a confident wrong answer: an edgeless graph has no scores (not
1.0/1.0), and a file that is not a full graph is named for what it is, never with pickle advice."""

from __future__ import annotations

import json

import numpy as np
import pytest

from graphs import GraphError, compute_scores, load_graph, prune_graph, save_graph, summarize
from graphs.summary import format_summary
from tests.graphs.hand_graph import hand_graph


def test_a_graph_without_edges_has_no_scores_and_says_it_is_empty():
    graph = hand_graph(adjacency=np.zeros((8, 8), dtype=np.float32))
    summary = summarize(graph, prune_graph(graph, 0.8, 0.98))
    assert set(summary["scores"].values()) == {None}
    assert summary["warnings"] and "empty" in summary["warnings"][0]
    assert "empty" in format_summary(summary)
    assert summarize(hand_graph(), prune_graph(hand_graph(), 0.8, 0.98))["warnings"] == []
    assert compute_scores(hand_graph())["replacement"] is not None


@pytest.mark.parametrize("content, said", [
    (json.dumps({"metadata": {}, "nodes": [], "links": []}).encode(), "viewer JSON"),
    (b"<?xml version='1.0'?><graphml/>", "GraphML"),
    (b"", "empty file"),
    (b"\x93NUMPY\x01\x00", "not a readable graph file"),
])
def test_a_file_that_is_not_a_full_graph_says_what_prune_takes(tmp_path, content, said):
    path = tmp_path / "g.json"
    path.write_bytes(content)
    with pytest.raises(GraphError) as info:
        load_graph(path)
    message = str(info.value)
    assert said in message and "circuits trace --full" in message and "pickle" not in message


def test_an_npz_holding_python_objects_never_suggests_allow_pickle(tmp_path):
    path = tmp_path / "g.npz"
    save_graph(hand_graph(), path)
    with np.load(path) as npz:
        arrays = dict(npz)
    arrays["kind"] = np.array([object()] * 8, dtype=object)
    np.savez(path, **arrays)
    with pytest.raises(GraphError) as info:
        load_graph(path)
    assert "pickle" not in str(info.value).lower()
    with pytest.raises(GraphError, match="is a directory"):
        load_graph(tmp_path)
