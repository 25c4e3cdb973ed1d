"""Streamed rows (issue 19): when the exact row store does not fit the budget, the choice runs on
each visited row's sketch (its STREAM_ROW_ENTRIES largest |edges|) and the chosen rows are
recomputed over the graph's columns. Every edge among the chosen set equals the straightforward
rows of that same set (1e-6); with sketches that hold every entry the choice equals the exact
store's; the plan streams only when the exact store does not fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from circuits.attribution import engine, streamed_rows
from circuits.attribution.frozen_backward import FrozenBlocks
from circuits.attribution.memory import RowPlan, TraceShape, plan_rows
from circuits.attribution.rows import SourceLayout, compute_rows, graph_source_columns
from circuits.attribution.targets import feature_seeds, logit_seeds
from circuits.attribution.to_graph import graph_edges
from tests.circuits.attribution_checks import attribute, random_transcoder
from tests.circuits.test_attribution import tiny_models  # noqa: F401 (fixture)


def _tokens(model, length: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, model.cfg.d_vocab, (length,), generator=gen)


def _run(model, tc, tokens, monkeypatch, cap: int, streamed: bool):
    monkeypatch.setattr(engine, "plan_rows",
                        lambda shape, requested, memory_gb: RowPlan(cap, None, None, streamed=streamed))
    return attribute(model, tc, tokens, batch_size=4, memory_gb=64)


def _straightforward_edges(model, tc, attr) -> np.ndarray:
    """The rows of the logits and of the chosen features over every source, cut to the graph's columns."""
    rep, blocks = attr.rep, FrozenBlocks(model)
    layout = SourceLayout(rep, tc)
    cols = graph_source_columns(attr.feature_idx, layout)
    logit_rows = compute_rows(rep, blocks, tc, layout, logit_seeds(rep, blocks, attr.logits))
    feature_rows = compute_rows(rep, blocks, tc, layout, feature_seeds(rep, blocks, tc, attr.feature_idx))
    return torch.cat([feature_rows[:, cols], logit_rows[:, cols]]).numpy()


def _gap(ours: np.ndarray, ref: np.ndarray) -> float:
    assert ours.shape == ref.shape
    scale = float(np.abs(ref).max())
    assert scale > 0
    return float(np.abs(ours - ref).max()) / scale


@pytest.mark.parametrize(("name", "kind"), [("llama3", "clt"), ("gemma2", "plt"), ("gpt2", "clt")])
def test_streamed_edges_equal_the_straightforward_rows_of_the_chosen_set(tiny_models, name, kind,  # noqa: F811
                                                                         monkeypatch):
    model = tiny_models(name)
    tc = random_transcoder(model.cfg.n_layers, model.cfg.d_model, kind, skip=kind == "clt", seed=5)
    tokens = _tokens(model, 12, seed=3)
    monkeypatch.setattr(streamed_rows, "STREAM_ROW_ENTRIES", 4)  # sketches far smaller than the rows
    cap = 30
    attr = _run(model, tc, tokens, monkeypatch, cap, streamed=True)
    assert attr.memory_plan["streamed"] and len(attr.feature_idx) == cap
    assert torch.equal(attr.feature_idx, attr.feature_idx.sort().values)
    assert _gap(graph_edges(attr), _straightforward_edges(model, tc, attr)) <= 1e-6


def test_phase_two_on_the_wrong_columns_is_caught(tiny_models, monkeypatch):  # noqa: F811
    model = tiny_models("llama3")
    tc = random_transcoder(model.cfg.n_layers, model.cfg.d_model, "clt", skip=True, seed=5)
    tokens = _tokens(model, 12, seed=3)
    rows_in_batches = engine._rows_in_batches

    def off_by_one(*args, cols=None, **kw):  # phase 2 keeps the column after each graph column
        return rows_in_batches(*args, cols=None if cols is None else (cols + 1).clamp_max(cols.max()), **kw)

    monkeypatch.setattr(engine, "_rows_in_batches", off_by_one)
    attr = _run(model, tc, tokens, monkeypatch, 30, streamed=True)
    assert _gap(graph_edges(attr), _straightforward_edges(model, tc, attr)) > 1e-3


def test_sketches_holding_every_entry_choose_as_the_exact_store(tiny_models, monkeypatch):  # noqa: F811
    model = tiny_models("gemma3")
    tc = random_transcoder(model.cfg.n_layers, model.cfg.d_model, "clt", skip=True, seed=5)
    tokens = _tokens(model, 12, seed=3)
    exact = _run(model, tc, tokens, monkeypatch, 40, streamed=False)
    monkeypatch.setattr(streamed_rows, "STREAM_ROW_ENTRIES", 10 ** 6)
    streamed = _run(model, tc, tokens, monkeypatch, 40, streamed=True)
    assert torch.equal(exact.feature_idx, streamed.feature_idx)
    assert _gap(graph_edges(streamed), graph_edges(exact)) <= 1e-6
    monkeypatch.setattr(streamed_rows, "STREAM_ROW_ENTRIES", 2)  # coarse sketches: a different choice here
    coarse = _run(model, tc, tokens, monkeypatch, 40, streamed=True)
    assert not torch.equal(exact.feature_idx, coarse.feature_idx)


# SmolLM2-135M at 2,000 tokens with a PLT of 512 features, ~64 active per token and layer
LONG = TraceShape(n_active=3_856_765, n_errors=30 * 1999, n_pos=2000, n_logits=10,
                  decoder_floats=3_856_765 * 576, gradient_bytes=4 * 2000 * 31 * 576, batch_rows=1,
                  fixed_bytes=700 * 2 ** 20, baseline_bytes=900 * 2 ** 20, cache_decoders=False)
SHORT = TraceShape(n_active=120, n_errors=20, n_pos=6, n_logits=3, decoder_floats=120 * 64, gradient_bytes=10_000)


def test_the_plan_streams_only_when_the_exact_store_does_not_fit():
    assert not plan_rows(SHORT, None, 4.0).streamed and not plan_rows(SHORT, 50, 4.0).streamed
    exact_default = plan_rows(LONG, None, 4.0)  # the store shrinks the default cap: exact, as before
    assert not exact_default.streamed and exact_default.store_limit is not None
    explicit = plan_rows(LONG, 2000, 4.0)  # 2,000 exact rows need ~30 GB: streamed instead of refused
    assert explicit.streamed and explicit.n_chosen == 2000
    assert LONG.bytes_for(2000) > 16 * 2 ** 30 and explicit.predicted_bytes <= 4 * 2 ** 30
    assert not plan_rows(LONG, 20, 4.0).streamed  # 20 exact rows fit
    too_small = TraceShape(**{**LONG.__dict__, "baseline_bytes": int(3.9 * 2 ** 30)})
    from circuits.errors import CircuitsError
    with pytest.raises(CircuitsError, match="shorten the prompt|lower --max-feature-nodes"):
        plan_rows(too_small, 2000, 4.0)
