"""Traced graphs store targets x sources edges: every edge equals the former all-nodes square
built from the attribution rows (bitwise), and pruning and scores equal the square's (world-tiny
and tiny checkpoints of every architecture)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from circuits.attribution.rows import Attribution
from circuits.attribution.to_graph import to_graph
from circuits.replacement.prompts import tokenize_prompt
from tests.circuits.attribution_checks import attribute, random_transcoder
from tests.circuits.test_attribution import ARCHITECTURES, tiny_models  # noqa: F401 (fixture)
from tests.graphs.dense_reference import assert_same_as_square


def square_from_rows(attr: Attribution) -> np.ndarray:
    """The square as the engine built it before: float32 [n_nodes, n_nodes], zero rows for errors
    and embeddings, zero columns for logits."""
    layout = attr.layout
    n_f = len(attr.feature_idx)
    n_rest = layout.n_errors + layout.n_pos
    n = n_f + n_rest + attr.logit_rows.shape[0]
    source_cols = torch.cat([attr.feature_idx, torch.arange(layout.n_features, layout.n_sources)])
    A = torch.zeros(n, n, dtype=torch.float32)
    A[:n_f, : n_f + n_rest] = attr.feature_rows[:, source_cols].float()
    A[n_f + n_rest:, : n_f + n_rest] = attr.logit_rows[:, source_cols].float()
    return A.numpy()


def _check(model, tc, prompt: str, **kwargs) -> None:
    attr = attribute(model, tc, tokenize_prompt(model, prompt), **kwargs)
    graph = to_graph(attr, model, tc, prompt)  # unlabelled: label_features labels it
    assert graph.edges.shape == (len(attr.feature_idx) + attr.logit_rows.shape[0],
                                 graph.n_nodes - attr.logit_rows.shape[0])
    assert np.array_equal(graph.adjacency, square_from_rows(attr))  # every edge, bitwise
    assert graph.n_edges() > 0
    for node_threshold, edge_threshold in ((0.8, 0.98), (0.6, 0.9)):
        assert_same_as_square(graph, node_threshold, edge_threshold)


@pytest.mark.parametrize("max_feature_nodes", [None, 40])
def test_world_tiny_graph_equals_the_square(world_tiny, max_feature_nodes):
    cfg = world_tiny.model.cfg
    tc = random_transcoder(cfg.n_layers, cfg.d_model, "clt", n_features=48, seed=11, threshold=0.5)
    _check(world_tiny.model, tc, "calc: 36+59=", max_feature_nodes=max_feature_nodes)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_tiny_architecture_graph_equals_the_square(tiny_models, name):
    model = tiny_models(name)
    tc = random_transcoder(model.cfg.n_layers, model.cfg.d_model, "plt", seed=2)
    _check(model, tc, "the capital of the state is")


def test_rows_are_put_in_node_order_in_place():
    from circuits.attribution.engine import permute_rows_in_place

    gen = torch.Generator().manual_seed(0)
    for n in (0, 1, 2, 7, 50):
        rows = torch.randn(n, 5, generator=gen)
        order = torch.randperm(n, generator=gen)
        expected = rows[order].clone()
        storage = rows.data_ptr()
        permute_rows_in_place(rows, order)
        assert torch.equal(rows, expected) and rows.data_ptr() == storage
