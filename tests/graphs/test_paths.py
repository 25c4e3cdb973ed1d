"""strongest_path on the hand graph, with the path weights computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from graphs import prune_graph
from graphs.graph import NodeKind
from graphs.paths import strongest_path
from tests.graphs.hand_graph import E0, E1, F0, F1, F2, L0, L1, R0, hand_graph


def _graph():
    """The hand graph with F2 <- F1 at -2: rows F0 (E1 .5, E0 .5), F1 (E1 1), F2 (F0 .4, F1 .4,
    R0 .2), L0 (F2 .5, R0 .25, E1 .25), L1 (F1 .5, E1 .5)."""
    g = hand_graph()
    a = g.dense_adjacency()
    a[F2, F1] = -2.0
    return hand_graph(adjacency=a)


def test_strongest_path_by_hand():
    g = _graph()
    pruned = prune_graph(g, 1.0, 1.0)  # keeps every node and edge
    # E1 -> F1 -> F2 -> L0: 1 * .4 * .5 = .2 beats E1 -> F0 -> F2 -> L0 (.1); the direct E1 -> L0
    # (.25) does not count: a path goes through at least one feature
    path = strongest_path(g, pruned, [E1], L0)
    assert path.nodes == [E1, F1, F2, L0]
    assert path.weight == pytest.approx(0.2)
    assert path.step_weights == pytest.approx([1.0, 0.4, 0.5])
    assert strongest_path(g, pruned, [E0], L0).nodes == [E0, F0, F2, L0]
    assert strongest_path(g, pruned, [E0], L0).weight == pytest.approx(0.1)
    assert strongest_path(g, pruned, [E0, E1], L1).nodes == [E1, F1, L1]   # .5
    assert strongest_path(g, pruned, [E0, E1], L1).weight == pytest.approx(0.5)
    # no allowed intermediate kind: no path
    assert not strongest_path(g, pruned, [E1], L0, through=(NodeKind.ERROR,))


def test_strongest_path_uses_kept_edges_only():
    g = _graph()
    pruned = prune_graph(g, 1.0, 1.0)
    mask = pruned.edge_mask.tolil()
    mask[F2, F1] = False                       # drop the strongest path's middle edge
    pruned.edge_mask = sparse.csr_array(mask)
    path = strongest_path(g, pruned, [E1], L0)
    assert path.nodes == [E1, F0, F2, L0]
    assert path.weight == pytest.approx(0.5 * 0.4 * 0.5)
    assert np.prod(path.step_weights) == pytest.approx(path.weight)


def test_summary_has_the_path_and_feature_groups():
    """Default pruning of the hand graph keeps 6 nodes (F0 goes): the strongest path to the top
    logit L0 (p .75) is E1 -> F1 (1) -> F2 (1/4) -> L0 (1/2), weight 1/8."""
    from graphs import summarize
    from graphs.summary import format_summary

    g = hand_graph()
    summary = summarize(g, prune_graph(g))
    path = summary["path"]
    assert [n["node_id"] for n in path["nodes"]] == [g.node_id(i) for i in (E1, F1, F2, L0)]
    assert path["weight"] == pytest.approx(0.125)
    assert path["target"] == "x" and path["nodes"][2]["label"] == "say x"
    groups = summary["features"]
    assert [(f["layer"], f["feature"]) for f in groups] == [(1, 5), (0, 3)]   # F2 before F1; F0 pruned
    assert groups[0]["positions"] == [1] and groups[0]["label"] == "say x"
    assert "strongest path to 'x'" in format_summary(summary)


def test_reaching_follows_kept_edges_backwards():
    from graphs.paths import reaching

    g = _graph()
    pruned = prune_graph(g, 1.0, 1.0)
    assert np.flatnonzero(reaching(pruned, L1)).tolist() == [F1, E1]              # L1 <- F1, E1; F1 <- E1
    assert np.flatnonzero(reaching(pruned, L0)).tolist() == [F0, F1, F2, R0, E0, E1]
    mask = pruned.edge_mask.tolil()
    mask[F2, F0] = False
    mask[F0, E0] = False
    pruned.edge_mask = sparse.csr_array(mask)
    assert not reaching(pruned, L0)[E0] and not reaching(pruned, L0)[F0]
    assert reaching(pruned, L0)[E1]
