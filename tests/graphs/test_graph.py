"""The Graph contract: node table, order, ids, validation."""

from __future__ import annotations

import numpy as np
import pytest

from graphs import Graph, GraphError, NodeKind
from tests.graphs.hand_graph import E0, E1, F0, F2, L0, L1, R0, hand_graph


def test_slices_and_node_table():
    graph = hand_graph()
    assert graph.n_nodes == 8 and graph.n_pos == 2 and graph.n_logits == 2
    assert (graph.feature_slice, graph.error_slice) == (slice(0, 3), slice(3, 4))
    assert (graph.embedding_slice, graph.logit_slice) == (slice(4, 6), slice(6, 8))
    assert graph.kind.dtype == np.int8 and graph.adjacency.dtype == np.float32
    assert graph.layer.tolist() == [0, 0, 1, 0, -1, -1, 2, 2]
    assert graph.token_id.tolist() == [-1, -1, -1, -1, 10, 11, 20, 21]
    assert graph.feature.tolist() == [7, 3, 5, -1, -1, -1, -1, -1]
    assert graph.n_edges() == 11


def test_node_ids_follow_viewer_convention():
    graph = hand_graph()
    assert graph.node_id(F0) == "0_7_1"  # {layer}_{feature}_{pos}
    assert graph.node_id(F2) == "1_5_1"
    assert graph.node_id(R0) == "0_-1_1"  # {layer}_-1_{pos}
    assert graph.node_id(E0) == "E_10_0"  # E_{token}_{pos}
    assert graph.node_id(L1) == "3_21_1"  # {n_layers + 1}_{vocab}_{last pos}
    assert len({graph.node_id(i) for i in range(graph.n_nodes)}) == graph.n_nodes


def test_logit_weights_default_to_probabilities():
    graph = hand_graph()
    np.testing.assert_array_equal(graph.logit_weights, [0.75, 0.25])
    np.testing.assert_array_equal(graph.logit_weight_vector(), [0, 0, 0, 0, 0, 0, 0.75, 0.25])


def test_custom_target_gets_uniform_weight_and_virtual_id():
    token_id = hand_graph().token_id.copy()
    token_id[L0] = -1  # "x - y" difference target
    graph = hand_graph(token_id=token_id, logit_labels=["x - y", "y"])
    np.testing.assert_array_equal(graph.logit_weights, [0.5, 0.5])
    assert graph.node_id(L0) == "3_32_1"  # d_vocab (32) + its index among logits (0)
    explicit = hand_graph(token_id=token_id, logit_weights=[1.0, 0.0])
    np.testing.assert_array_equal(explicit.logit_weights, [1.0, 0.0])


def test_make_node_table_order_and_kinds():
    graph = hand_graph()
    assert [NodeKind(k) for k in graph.kind] == [NodeKind.FEATURE] * 3 + [NodeKind.ERROR] + \
        [NodeKind.EMBEDDING] * 2 + [NodeKind.LOGIT] * 2
    assert graph.position.tolist() == [1, 1, 1, 1, 0, 1, 1, 1]
    assert graph.activation.tolist() == [2.0, 1.0, 1.5, 0, 0, 0, 0, 0]


def test_metadata_is_normalised_to_json():
    graph = hand_graph(settings={"batch": np.int64(4), "shape": (2, 3)})
    assert graph.settings == {"batch": 4, "shape": [2, 3]}
    assert type(graph.settings["batch"]) is int
    with pytest.raises(GraphError, match="settings is not JSON"):
        hand_graph(settings={"bad": object()})


def _adjacency_with(t: int, s: int, value: float) -> np.ndarray:
    adjacency = hand_graph().adjacency.copy()
    adjacency[t, s] = value
    return adjacency


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"adjacency": np.zeros((7, 7), np.float32)}, "adjacency has shape"),
        ({"layer": np.zeros(5)}, "layer has shape"),
        ({"adjacency": _adjacency_with(F2, F0, np.nan)}, "NaN or Inf"),
        ({"adjacency": _adjacency_with(L0, E0, np.inf)}, "NaN or Inf"),
        ({"activation": [np.nan] + [0.0] * 7}, "activations contain NaN"),
        ({"kind": [0, 0, 0, 2, 1, 2, 3, 3]}, "out of order"),
        ({"adjacency": _adjacency_with(F0, F2, 1.0)}, "against the causal order"),  # layer 1 -> layer 0
        ({"adjacency": _adjacency_with(E1, F0, 1.0)}, "edges into embedding"),
        ({"adjacency": _adjacency_with(R0, E1, 1.0)}, "edges into error"),
        ({"logit_probabilities": [0.5]}, "logit_probabilities has shape"),
        ({"logit_weights": [0.0, 0.0]}, "sum to 0"),
        ({"logit_weights": [-1.0, 2.0]}, "finite and >= 0"),
        ({"logit_labels": ["x"]}, "2 logit labels|but 1 logit labels"),
        ({"token_strs": ["a"]}, "token strings"),
        ({"token_ids": [10, 99]}, "token id at their position"),
        ({"feature_labels": {42: "nope"}}, "node 42"),
        ({"feature": [7, 7, 5, -1, -1, -1, -1, -1]}, "two nodes with id 0_7_1"),
        ({"token_id": [-1, -1, -1, -1, 10, 11, 20, 20]}, "two nodes with id 3_20_1"),
    ],
)
def test_invalid_graphs_raise_one_line_errors(overrides, message):
    with pytest.raises(GraphError, match=message) as info:
        hand_graph(**overrides)
    assert "\n" not in str(info.value)


def test_edge_back_in_position_is_rejected():
    """Moving F2 to position 0 makes its inputs (at position 1) come from the future."""
    graph = hand_graph()
    position = graph.position.copy()
    position[F2] = 0
    with pytest.raises(GraphError, match="0_7_1 -> 1_5_0 goes against the causal order"):
        Graph(**{**_fields(graph), "position": position})


def _fields(graph: Graph) -> dict:
    return {name: getattr(graph, name) for name in graph.__dataclass_fields__}


def test_equality_compares_arrays():
    assert hand_graph() == hand_graph()
    assert hand_graph() != hand_graph(adjacency=_adjacency_with(L0, E1, 2.0))
    assert hand_graph() != hand_graph(prompt="other")
