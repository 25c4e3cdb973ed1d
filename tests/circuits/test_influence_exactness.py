"""The engine's bounded-memory feature choice equals the straightforward one (issue 19).

The reference below is the engine as it was before the row store: rows of the logits and of EVERY
active feature over EVERY source, then influence-ordered rounds on those full rows (influence
w^T (A_hat + A_hat^2 + ...) walked hop by hop over all active features, as METHOD.md states it),
then the graph's columns selected from the full rows. The engine must choose the same features
and give the same edges (1e-6 relative) while keeping only the chosen columns.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from circuits.attribution.to_graph import graph_edges
from circuits.attribution.frozen_backward import FrozenBlocks
from circuits.attribution.rows import SourceLayout, compute_rows
from circuits.attribution.targets import feature_seeds, logit_seeds, select_logits
from circuits.replacement.local import build_local_replacement
from tests.circuits.attribution_checks import attribute, random_transcoder
from tests.circuits.test_attribution import ARCHITECTURES, tiny_models  # noqa: F401 (fixture)


def _normalised(rows: torch.Tensor) -> torch.Tensor:
    a = rows.abs()
    return a / a.sum(1, keepdim=True).clamp_min(1e-30)


def reference_choice(model, tc, tokens, cap: int, batch_size: int) -> tuple[torch.Tensor, np.ndarray]:
    """(chosen feature indices in node order, graph edges) the straightforward way."""
    rep = build_local_replacement(model, tc, tokens)
    blocks = FrozenBlocks(model)
    layout = SourceLayout(rep, tc)
    logits = select_logits(rep, blocks.W_U_d_vocab, 10, 0.95)
    n_f = layout.n_features
    logit_rows = compute_rows(rep, blocks, tc, layout, logit_seeds(rep, blocks, logits))
    everything = torch.arange(n_f)
    feature_rows = compute_rows(rep, blocks, tc, layout, feature_seeds(rep, blocks, tc, everything))
    weights = logits.weights.float()
    visited: list[int] = []
    max_depth = rep.error_layer_pos_d.shape[0] + 1
    while len(visited) < cap:
        flow = weights @ _normalised(logit_rows)[:, :n_f]
        influence = flow.clone()
        v = torch.tensor(visited, dtype=torch.long)
        for _ in range(max_depth):
            if not len(v):
                break
            flow = flow[v] @ _normalised(feature_rows[v])[:, :n_f]
            influence += flow
            if float(flow.abs().max()) < 1e-12:
                break
        influence[v] = -1.0
        k = min(max(batch_size, len(visited) // 4), cap - len(visited))
        visited += influence.topk(k).indices.tolist()
    chosen = torch.tensor(sorted(visited), dtype=torch.long)
    cols = torch.cat([chosen, torch.arange(n_f, layout.n_sources)])
    edges = torch.cat([feature_rows[chosen][:, cols], logit_rows[:, cols]])
    return chosen, edges.numpy()


def assert_same_as_reference(model, tc, tokens, cap: int, batch_size: int) -> None:
    chosen, edges = reference_choice(model, tc, tokens, cap, batch_size)
    attr = attribute(model, tc, tokens, max_feature_nodes=cap, batch_size=batch_size)
    assert torch.equal(attr.feature_idx.cpu(), chosen)
    ours = graph_edges(attr)
    assert ours.shape == edges.shape
    scale = np.abs(edges).max()
    assert scale > 0
    assert np.abs(ours - edges).max() <= 1e-6 * scale, np.abs(ours - edges).max() / scale


def _tokens(model, length: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, model.cfg.d_vocab, (length,), generator=gen)


@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_world_tiny_capped_choice_equals_the_reference(world_tiny, kind):
    from circuits.replacement.prompts import tokenize_prompt

    model = world_tiny.model
    tc = random_transcoder(model.cfg.n_layers, model.cfg.d_model, kind, n_features=48, seed=11, threshold=0.5)
    tokens = tokenize_prompt(model, "calc: 36+59= calc: 12+30=")
    n_active = len(build_local_replacement(model, tc, tokens).features)
    assert n_active > 60
    for cap in (n_active // 5, n_active // 2):  # several rounds, each of at least one batch
        assert_same_as_reference(model, tc, tokens, cap, batch_size=4)


@pytest.mark.parametrize("name", ["llama3", "gemma3", "gpt2"])
def test_tiny_checkpoints_capped_choice_equals_the_reference(tiny_models, name):  # noqa: F811
    model = tiny_models(name)
    tc = random_transcoder(model.cfg.n_layers, model.cfg.d_model, "clt", skip=True, seed=5)
    tokens = _tokens(model, 12, seed=3)
    n_active = len(build_local_replacement(model, tc, tokens).features)
    assert n_active > 40
    assert_same_as_reference(model, tc, tokens, n_active // 3, batch_size=3)


def test_a_full_row_store_stops_where_that_cap_would(world_tiny, monkeypatch):
    """The default cap under a budget: choice stops when the row store is full, and the features
    chosen (and their edges) are those of the reference run with the cap set to their number."""
    from circuits.attribution import engine
    from circuits.attribution.memory import RowPlan
    from circuits.replacement.prompts import tokenize_prompt

    model = world_tiny.model
    tc = random_transcoder(model.cfg.n_layers, model.cfg.d_model, "plt", n_features=48, seed=11, threshold=0.5)
    tokens = tokenize_prompt(model, "calc: 36+59= calc: 12+30=")
    rep = build_local_replacement(model, tc, tokens)
    n_active, n_sources = len(rep.features), len(rep.features) + (model.cfg.n_layers + 1) * len(tokens)
    limit = (n_active // 40) * n_sources * 4  # room for fewer rows than the cap below
    monkeypatch.setattr(engine, "plan_rows", lambda shape, requested, memory_gb: RowPlan(n_active // 2, limit, None))
    attr = attribute(model, tc, tokens, batch_size=4, memory_gb=64)
    n = len(attr.feature_idx)
    assert n_active // 40 <= n < n_active // 2  # the store, not the cap, stopped the choice
    chosen, edges = reference_choice(model, tc, tokens, n, batch_size=4)
    assert torch.equal(attr.feature_idx, chosen)
    assert np.abs(graph_edges(attr) - edges).max() <= 1e-6 * np.abs(edges).max()
