"""`trace(..., qk=True)`: head loadings on the kept edges and QK attributions of the busiest heads,
attached to the graph, kept through .npz and written as Neuronpedia's schema wants them.

world-tiny with a random CLT (the `setup` fixture of tests/circuits/conftest.py)."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest

from circuits.attention import explain_head
from graphs import load_graph, prune_graph, to_viewer_json
from tests.viewer.conftest import schema

PROMPT = "calc: 36+59="


@pytest.fixture(scope="module")
def traced(setup):
    return setup.trace(PROMPT, qk=True, qk_heads=3)


def test_loadings_of_every_kept_cross_position_edge_sum_to_it(traced):
    graph, pruned = traced.graph, traced.pruned
    lo = graph.attention.loadings
    targets, sources = map(np.asarray, pruned.edges())
    cross = graph.position[targets] != graph.position[sources]
    assert 0 < cross.sum() < len(targets)  # both kinds are kept; only cross-position ones are listed
    assert set(zip(lo.target.tolist(), lo.source.tolist())) == set(zip(targets[cross].tolist(), sources[cross].tolist()))
    edges = graph.edge_weights(lo.target, lo.source)
    row_scale = np.abs(graph.edges).max(1)[graph.target_rows(lo.target)]
    assert np.all(lo.remainder == 0)
    assert np.all(np.abs(lo.loadings.sum((1, 2)) - edges) <= 1e-5 * row_scale)


def test_heads_are_the_busiest_and_their_scores_add_up(traced):
    data = traced.graph.attention
    lo = data.loadings
    cross = traced.graph.position[lo.target] != traced.graph.position[lo.source]
    totals = lo.head_totals(cross)
    assert [(h.layer, h.head) for h in data.heads] == \
        [divmod(int(j), totals.shape[1]) for j in np.argsort(-totals.reshape(-1), kind="stable")[:3]]
    for h in data.heads:
        assert h.key <= h.query and h.pattern > 0
        assert abs(h.score - h.model_score) <= 1e-4 * max(1.0, abs(h.model_score))
        assert h.pairs and h.q_marginals and h.k_marginals
        ids = {i for p in h.pairs for i in p[:2]} | {m[0] for m in h.q_marginals + h.k_marginals}
        assert ids <= set(h.nodes)


def test_viewer_json_validates_and_resolves_every_contributor(traced):
    doc = to_viewer_json(traced.graph, traced.pruned)
    jsonschema.Draft7Validator(schema("neuronpedia-graph-schema.json")).validate(doc)
    node_ids = {n["node_id"] for n in doc["nodes"]}
    hosts = [n for n in doc["nodes"] if "qk_tracing_results" in n]
    assert hosts
    for n in hosts:
        r = n["qk_tracing_results"]
        ids = {p[0] for p in r["pair_wise_contributors"]} | {p[1] for p in r["pair_wise_contributors"]}
        ids |= {m[0] for m in r["top_q_marginal_contributors"] + r["top_k_marginal_contributors"]}
        assert ids <= node_ids | set(doc.get("qk_only_nodes", {}))
        assert n["ctx_idx"] == r["head"]["query"]
    assert any("head_loadings" in link for link in doc["links"])
    assert len(doc["attention_heads"]) == 3


def test_full_graph_keeps_the_attention_results(traced, tmp_path):
    path = traced.save(tmp_path / "g.npz")
    back = load_graph(path)
    a, b = traced.graph.attention, back.attention
    assert np.array_equal(a.loadings.loadings, b.loadings.loadings)
    assert np.array_equal(a.loadings.target, b.loadings.target)
    assert [h.to_json() for h in a.heads] == [h.to_json() for h in b.heads]
    # a stricter re-prune keeps loadings for every cross-position edge it keeps
    stricter = prune_graph(back, 0.6, 0.9)
    doc = to_viewer_json(back, stricter)
    assert json.dumps(doc)
    t, s = map(np.asarray, stricter.edges())
    cross = back.position[t] != back.position[s]
    assert all((back.attention.loadings.row(ti, si) is not None) == c for ti, si, c in zip(t.tolist(), s.tolist(), cross))


def test_explain_head_matches_the_graph(setup, traced):
    h = traced.graph.attention.heads[0]
    direct = explain_head(setup, PROMPT, h.layer, h.head, h.query, h.key)
    assert direct.pairs == h.pairs and direct.q_marginals == h.q_marginals
    assert abs(direct.model_score - h.model_score) <= 1e-6


def test_the_trace_hands_over_its_replacement_and_a_rebuilt_one_agrees(setup, traced, monkeypatch):
    """trace(qk=True) explains the local replacement model the trace computed (no second forward
    pass); attaching from the graph alone rebuilds it and gives the same loadings and heads."""
    import copy

    from circuits.attention import attach as attach_module
    from circuits.attention.attach import attach_attention

    built = []
    real = attach_module.build_local_replacement
    monkeypatch.setattr(attach_module, "build_local_replacement", lambda *a: built.append(1) or real(*a))
    setup.trace(PROMPT, qk=True, qk_heads=3)
    assert built == []
    graph = copy.copy(traced.graph)
    data = attach_attention(graph, traced.pruned, setup.model, setup.transcoder, 3)
    assert built == [1]
    lo = traced.graph.attention.loadings
    assert np.array_equal(data.loadings.target, lo.target) and np.array_equal(data.loadings.source, lo.source)
    assert np.allclose(data.loadings.loadings, lo.loadings, rtol=1e-5, atol=1e-7)
    assert [(h.layer, h.head, h.query, h.key) for h in data.heads] == \
        [(h.layer, h.head, h.query, h.key) for h in traced.graph.attention.heads]
    assert [p[:2] for p in data.heads[0].pairs] == [p[:2] for p in traced.graph.attention.heads[0].pairs]
