"""The graph holds targets x sources edges, not the all-nodes square, and everything computed from
them (influence, pruning, scores, exports) equals what the square gave."""

from __future__ import annotations

import numpy as np
import pytest

from graphs import Graph, GraphError, load_graph, save_graph, to_viewer_json
from graphs.prune import FLOAT64_MAX_NODES, prune_graph
from tests.graphs.dense_reference import assert_same_as_square
from tests.graphs.hand_graph import E1, EDGES, F0, F1, F2, L0, L1, R0, hand_graph
from tests.graphs.random_graph import random_graph


def test_edges_are_targets_by_sources():
    graph = hand_graph()
    assert (graph.n_targets, graph.n_sources) == (5, 6)  # F0 F1 F2 L0 L1 x F0 F1 F2 R0 E0 E1
    assert graph.edges.shape == (5, 6) and graph.edges.dtype == np.float32
    assert graph.target_nodes().tolist() == [F0, F1, F2, L0, L1]
    assert [graph.target_row(i) for i in range(8)] == [0, 1, 2, None, None, None, 3, 4]
    assert graph.target_rows([L1, R0, F2]).tolist() == [4, -1, 2]
    square = graph.adjacency
    for (t, s), weight in EDGES.items():
        assert graph.edges[graph.target_row(t), s] == weight == square[t, s]
    assert np.count_nonzero(square) == len(EDGES) == graph.n_edges()


def test_node_reads_match_the_square():
    graph = hand_graph()
    square = graph.adjacency
    for i in range(graph.n_nodes):
        np.testing.assert_array_equal(graph.incoming(i), square[i])
        np.testing.assert_array_equal(graph.outgoing(i), square[:, i])
    t, s = np.nonzero(np.ones((8, 8), dtype=bool))
    np.testing.assert_array_equal(graph.edge_weights(t, s), square[t, s])
    assert graph.incoming(E1).dtype == np.float32 and not graph.outgoing(L0).any()


def test_square_and_edges_build_the_same_graph():
    graph = hand_graph()
    fields = {name: getattr(graph, name) for name in graph.__dataclass_fields__ if name != "adjacency"}
    assert Graph(**fields) == graph
    with pytest.raises(GraphError, match=r"edges has shape \(4, 6\), expected \(5, 6\)"):
        Graph(**{**fields, "edges": graph.edges[:4]})
    square = graph.adjacency
    square[L1, F1] = 5.0
    with pytest.raises(GraphError, match="edges and adjacency disagree"):
        Graph(**fields, adjacency=square)
    square = graph.adjacency
    square[F2, L0] = 1.0  # out of a logit: no logit is a source
    with pytest.raises(GraphError, match="-> 1_5_1 goes against the causal order"):
        Graph(**{**fields, "edges": None}, adjacency=square)


@pytest.mark.parametrize("seed", range(6))
def test_pruning_and_scores_equal_the_square_on_random_graphs(seed):
    graph = random_graph(seed, n_layers=3 + seed % 3, n_pos=4 + seed, error_scale=[1.0, 0.3, 0.0][seed % 3])
    for node_threshold, edge_threshold in ((0.8, 0.98), (0.5, 0.9), (1.0, 1.0)):
        assert_same_as_square(graph, node_threshold, edge_threshold)


def test_pruning_and_scores_equal_the_square_on_the_hand_graph():
    for node_threshold, edge_threshold in ((0.8, 0.98), (0.6, 0.7), (1.0, 1.0)):
        assert_same_as_square(hand_graph(), node_threshold, edge_threshold)


def test_float32_influence_of_a_large_graph_equals_the_square():
    """Above FLOAT64_MAX_NODES nodes A_hat is float32: the same nodes and edges survive and the
    influences agree to float32 rounding (its sums run over other shapes)."""
    graph = random_graph(3, n_layers=12, n_pos=34, features_per_site=20, density=0.02)
    assert graph.n_nodes > FLOAT64_MAX_NODES
    assert_same_as_square(graph, rtol=1e-6)


@pytest.mark.parametrize("layout", ["dense", "csr", "causal"])
def test_every_file_layout_round_trips_the_edges(tmp_path, layout):
    graph = random_graph(7)
    save_graph(graph, tmp_path / "g.npz", layout=layout)
    loaded = load_graph(tmp_path / "g.npz")
    assert loaded == graph and loaded.edges.shape == (graph.n_targets, graph.n_sources)


def test_viewer_links_carry_the_edge_weights():
    graph = random_graph(2)
    pruned = prune_graph(graph)
    doc = to_viewer_json(graph, pruned)
    square = graph.adjacency
    ids = {graph.node_id(i): i for i in range(graph.n_nodes)}
    assert len(doc["links"]) == pruned.n_edges_after > 0
    for link in doc["links"]:
        assert link["weight"] == float(square[ids[link["target"]], ids[link["source"]]])
