"""Pruning and scores on the hand-built graph of hand_graph.py, every number computed by hand.

A_hat (|A| rows normalised):
    F0: E1 1/2, E0 1/2        F1: E1 1
    F2: F0 1/2, F1 1/4, R0 1/4
    L0: F2 1/2, R0 1/4, E1 1/4
    L1: F1 1/2, E1 1/2
w = (L0 0.75, L1 0.25).

Influence x = w A_hat + w A_hat^2 + ...:
    step 1 (from L0, L1): F2 .75*.5 = .375, R0 .75*.25 = .1875, E1 .75*.25 + .25*.5 = .3125, F1 .25*.5 = .125
    step 2 (from F2 .375, F1 .125): F0 .1875, F1 .09375, R0 .09375, E1 .125
    step 3 (from F0 .1875, F1 .09375): E0 .09375, E1 .09375 + .09375 = .1875
    total: F0 .1875, F1 .21875, F2 .375, R0 .28125, E0 .09375, E1 .625, logits 0
    (the unit mass of w ends in the sources: E0 + E1 + R0 = .09375 + .625 + .28125 = 1)
"""

from __future__ import annotations

import numpy as np
import pytest

from graphs import GraphError, compute_scores, node_influence, prune_graph
from graphs.prune import normalized_abs_adjacency
from tests.graphs.hand_graph import E0, E1, F0, F1, F2, L0, L1, R0, hand_graph

INFLUENCE = {F0: 0.1875, F1: 0.21875, F2: 0.375, R0: 0.28125, E0: 0.09375, E1: 0.625, L0: 0.0, L1: 0.0}


def _edges(pruned) -> set[tuple[int, int]]:
    targets, sources = pruned.edges()
    return set(zip(targets.tolist(), sources.tolist()))


def test_influence_by_hand():
    influence = node_influence(hand_graph())
    np.testing.assert_allclose(influence, [INFLUENCE[i] for i in range(8)], rtol=0, atol=1e-12)


def test_influence_equals_inverse_formula():
    """w^T ((I - A_hat)^-1 - I), formed explicitly, agrees with the power series."""
    graph = hand_graph()
    a_hat = normalized_abs_adjacency(graph.adjacency)
    b = np.linalg.inv(np.eye(8) - a_hat) - np.eye(8)
    np.testing.assert_allclose(node_influence(graph), graph.logit_weight_vector() @ b, atol=1e-12)


def test_scores_full_graph_by_hand():
    """replacement = tokens / (tokens + errors) = (.09375 + .625) / (.71875 + .28125) = .71875.
    completeness: (influence + w) * (1 - error share) per node:
        F0 .1875*1, F1 .21875*1, F2 .375*(1 - 1/4), R0 .28125*1, E0 .09375, E1 .625,
        L0 .75*(1 - 1/4), L1 .25*1  -> sum 2.5;  sum(influence + w) = 1.78125 + 1 = 2.78125
        completeness = 2.5 / 2.78125 = 80/89."""
    scores = compute_scores(hand_graph())
    assert scores["replacement"] == pytest.approx(0.71875, abs=1e-12)
    assert scores["completeness"] == pytest.approx(80 / 89, abs=1e-12)
    assert scores["replacement_pruned"] is None and scores["completeness_pruned"] is None


def test_node_step_keeps_smallest_set_over_threshold():
    """Feature+error influence sorted: F2 .375, R0 .28125, F1 .21875, F0 .1875 (total 1.0625).
    Cumulative shares: .353, .618, .824, 1. Threshold .8 -> {F2, R0, F1}; .6 -> {F2, R0};
    .3 -> {F2}. Embeddings and logits always pass this step."""
    graph = hand_graph()
    for threshold, kept_inner in ((0.8, {F2, R0, F1}), (0.6, {F2, R0}), (0.3, {F2}), (1.0, {F0, F1, F2, R0})):
        mask = prune_graph(graph, node_threshold=threshold).node_mask_by_influence
        assert set(np.flatnonzero(mask).tolist()) == kept_inner | {E0, E1, L0, L1}, threshold


def test_edge_step_by_hand_default_thresholds():
    """Subgraph without F0: F2's row renormalises to F1 1/2, R0 1/2. Influence there:
    step 1 as before: F2 .375, R0 .1875, E1 .3125, F1 .125; step 2: F1 .1875, R0 .1875, E1 .125;
    step 3: E1 .1875 -> F1 .3125, F2 .375, R0 .375, E1 .625.
    Edge score A_hat[t,s] * (influence_t + w_t):
        F1<-E1 1*.3125 = .3125; F2<-F1 .5*.375 = .1875; F2<-R0 .1875;
        L0<-F2 .5*.75 = .375; L0<-R0 .1875; L0<-E1 .1875; L1<-F1 .5*.25 = .125; L1<-E1 .125
    total 1.6875; 0.98 of it needs every edge. Then E0 has no outgoing edge left -> dropped."""
    graph = hand_graph()
    pruned = prune_graph(graph)  # 0.8, 0.98
    assert _edges(pruned) == {(F1, E1), (F2, F1), (F2, R0), (L0, F2), (L0, R0), (L0, E1), (L1, F1), (L1, E1)}
    assert set(np.flatnonzero(pruned.node_mask).tolist()) == {F1, F2, R0, E1, L0, L1}
    assert pruned.counts(graph) == {"nodes_before": 8, "nodes_after": 6, "edges_before": 11,
                                    "edges_after": 8, "features_before": 3, "features_after": 2}


def test_edge_step_ties_and_cascade():
    """Edge scores sorted: .375, .3125, .1875 x4, .125 x2 (cumulative share .222, .407, .519 ...).
    Threshold .5 -> cutoff .1875 (ties kept): the two L1 edges go; L1 stays (logits always do).
    Threshold .4 -> cutoff .3125: only L0<-F2 and F1<-E1. F2 then has no input -> dropped, which
    removes L0<-F2; F1 has no output -> dropped, removing F1<-E1; then E1, R0, E0 have no output.
    Only the two logits remain."""
    graph = hand_graph()
    half = prune_graph(graph, edge_threshold=0.5)
    assert _edges(half) == {(F1, E1), (F2, F1), (F2, R0), (L0, F2), (L0, R0), (L0, E1)}
    assert set(np.flatnonzero(half.node_mask).tolist()) == {F1, F2, R0, E1, L0, L1}
    cascade = prune_graph(graph, edge_threshold=0.4)
    assert _edges(cascade) == set()
    assert set(np.flatnonzero(cascade.node_mask).tolist()) == {L0, L1}


def test_scores_pruned_by_hand():
    """Pruned graph (0.8, 0.98): kept edges as above, normalised by the FULL row sums, so F2's
    kept row is F1 1/4, R0 1/4 and the dropped F0 edge (1/2) is unexplained.
    Influence on kept edges: step 1 F2 .375, R0 .1875, E1 .3125, F1 .125;
    step 2 F1 .09375, R0 .09375, E1 .125 (and .375 * 1/2 = .1875 lost to the dropped edge);
    step 3 E1 .09375 -> F1 .21875, F2 .375, R0 .28125, E1 .53125.
    replacement = .53125 / (.53125 + .28125 + .1875) = .53125.
    completeness: kept non-error share * (influence + w):
        F1 1*.21875, F2 (1/4)*.375, R0 .28125, E1 .53125, L0 (3/4)*.75, L1 1*.25 -> 1.9375
        over .21875 + .375 + .28125 + .53125 + .75 + .25 = 2.40625 -> 62/77."""
    graph = hand_graph()
    scores = compute_scores(graph, prune_graph(graph))
    assert scores["replacement"] == pytest.approx(0.71875, abs=1e-12)
    assert scores["replacement_pruned"] == pytest.approx(0.53125, abs=1e-12)
    assert scores["completeness_pruned"] == pytest.approx(62 / 77, abs=1e-12)


def test_keeping_everything_reproduces_full_scores():
    graph = hand_graph()
    scores = compute_scores(graph, prune_graph(graph, node_threshold=1.0, edge_threshold=1.0))
    assert scores["replacement_pruned"] == pytest.approx(scores["replacement"], abs=1e-12)
    assert scores["completeness_pruned"] == pytest.approx(scores["completeness"], abs=1e-12)


def test_logit_weights_scale_influence():
    """With w = (1, 0) only L0's paths count: F2 gets 1 * 1/2 = .5 directly."""
    graph = hand_graph(logit_weights=[1.0, 0.0])
    assert node_influence(graph)[F2] == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_bad_threshold_is_one_line_error(bad):
    with pytest.raises(GraphError, match="threshold must lie in"):
        prune_graph(hand_graph(), node_threshold=bad)
