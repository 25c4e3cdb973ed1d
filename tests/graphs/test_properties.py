"""Properties of influence, pruning and scores on random graphs that obey the Graph contract."""

from __future__ import annotations

import time

import numpy as np
import pytest

from graphs import NodeKind, compute_scores, node_influence, prune_graph
from graphs.prune import normalized_abs_adjacency
from tests.graphs.random_graph import random_graph

SEEDS = range(8)


def _inner(graph) -> np.ndarray:
    return (graph.kind == NodeKind.FEATURE) | (graph.kind == NodeKind.ERROR)


@pytest.mark.parametrize("seed", SEEDS)
def test_influence_matches_matrix_inverse(seed):
    graph = random_graph(seed)
    n = graph.n_nodes
    b = np.linalg.inv(np.eye(n) - normalized_abs_adjacency(graph.adjacency)) - np.eye(n)
    np.testing.assert_allclose(node_influence(graph), graph.logit_weight_vector() @ b, atol=1e-10)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("threshold", [0.5, 0.8, 0.95])
def test_node_step_keeps_threshold_share_minimally(seed, threshold):
    graph = random_graph(seed)
    pruned = prune_graph(graph, node_threshold=threshold)
    inner, mask = _inner(graph), pruned.node_mask_by_influence
    influence = pruned.node_influence
    kept_share = influence[inner & mask].sum() / influence[inner].sum()
    assert kept_share >= threshold - 1e-9
    # minimal: without its least influential kept node the set falls short (ties aside)
    weakest = influence[inner & mask].min()
    assert kept_share - weakest / influence[inner].sum() < threshold
    # and every dropped feature/error node is no more influential than every kept one
    dropped = influence[inner & ~mask]
    assert dropped.size == 0 or dropped.max() <= weakest
    assert mask[~inner].all()  # embeddings and logits pass the node step


@pytest.mark.parametrize("seed", SEEDS)
def test_raising_node_threshold_never_removes_nodes_at_node_step(seed):
    graph = random_graph(seed)
    masks = [prune_graph(graph, node_threshold=t).node_mask_by_influence for t in (0.3, 0.6, 0.8, 0.9, 1.0)]
    for low, high in zip(masks, masks[1:]):
        assert not (low & ~high).any()


@pytest.mark.parametrize("seed", SEEDS)
def test_raising_edge_threshold_never_removes_nodes_or_edges(seed):
    graph = random_graph(seed)
    results = [prune_graph(graph, node_threshold=0.8, edge_threshold=t) for t in (0.5, 0.8, 0.9, 0.98, 1.0)]
    for low, high in zip(results, results[1:]):
        assert not (low.node_mask & ~high.node_mask).any()
        assert (low.edge_mask > high.edge_mask).nnz == 0  # no edge kept at low but not at high


@pytest.mark.parametrize("seed", SEEDS)
def test_pruned_graph_is_consistent(seed):
    """Kept edges join kept nodes; every kept feature has an input and an output; every kept
    error and embedding has an output; logits always stay; kept edges are real edges."""
    graph = random_graph(seed)
    pruned = prune_graph(graph, node_threshold=0.7, edge_threshold=0.9)
    targets, sources = pruned.edges()
    assert pruned.node_mask[targets].all() and pruned.node_mask[sources].all()
    assert np.all(graph.adjacency[targets, sources] != 0)
    n = graph.n_nodes
    has_out = np.bincount(sources, minlength=n) > 0
    has_in = np.bincount(targets, minlength=n) > 0
    kept, kind = pruned.node_mask, graph.kind
    assert has_out[kept & (kind != NodeKind.LOGIT)].all()
    assert has_in[kept & (kind == NodeKind.FEATURE)].all()
    assert kept[kind == NodeKind.LOGIT].all()


@pytest.mark.parametrize("seed", SEEDS)
def test_scores_lie_in_unit_interval_and_pruning_does_not_raise_replacement(seed):
    graph = random_graph(seed)
    for node_threshold, edge_threshold in ((0.8, 0.98), (0.5, 0.7), (0.95, 0.5)):
        scores = compute_scores(graph, prune_graph(graph, node_threshold, edge_threshold))
        for value in scores.values():
            assert 0.0 <= value <= 1.0 + 1e-12
        # the pruned graph's token paths are a subset of the full graph's, and what it leaves out
        # counts as unexplained, so its replacement score cannot be higher
        assert scores["replacement_pruned"] <= scores["replacement"] + 1e-9


@pytest.mark.parametrize("seed", SEEDS)
def test_keeping_everything_reproduces_full_scores(seed):
    graph = random_graph(seed)
    scores = compute_scores(graph, prune_graph(graph, node_threshold=1.0, edge_threshold=1.0))
    assert scores["replacement_pruned"] == pytest.approx(scores["replacement"], abs=1e-9)
    assert scores["completeness_pruned"] == pytest.approx(scores["completeness"], abs=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
def test_no_error_influence_means_replacement_one(seed):
    graph = random_graph(seed, error_scale=0.0)
    scores = compute_scores(graph, prune_graph(graph, node_threshold=1.0, edge_threshold=1.0))
    assert scores["replacement"] == 1.0
    assert scores["completeness"] == pytest.approx(1.0, abs=1e-12)
    assert scores["replacement_pruned"] == pytest.approx(1.0, abs=1e-12)
    # and the same graph with errors switched on scores lower
    noisy = compute_scores(random_graph(seed, error_scale=1.0))
    assert noisy["replacement"] < 1.0 and noisy["completeness"] < 1.0


def test_large_graph_prunes_quickly():
    """~3000 nodes (a realistic size; the method is the same for 10k): prune + scores in seconds."""
    graph = random_graph(0, n_layers=8, n_pos=24, features_per_site=25, density=0.05)
    assert graph.n_nodes > 2500
    start = time.perf_counter()
    pruned = prune_graph(graph)
    scores = compute_scores(graph, pruned)
    elapsed = time.perf_counter() - start
    assert pruned.n_nodes_after < graph.n_nodes and 0 < scores["replacement"] < 1
    assert elapsed < 10.0, f"prune + scores took {elapsed:.1f} s"
