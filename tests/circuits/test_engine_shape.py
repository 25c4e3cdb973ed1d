"""The engine's shape: attribute(rm, prompt, config) -> a finished, labelled Graph; one TraceConfig
flows whole to the engine; trace_prompt orchestrates attribute -> prune -> summarize; one target
chooser (config.answer is the example of a trace option added in the config, the engine, one test)."""

from __future__ import annotations

import numpy as np

from circuits.attribution.config import TraceConfig
from circuits.attribution.engine import attribute
from circuits.trace import trace_prompt
from graphs import Graph, NodeKind, prune_graph

PROMPT = "calc: 36+59="


def test_attribute_returns_a_labelled_graph_in_one_pass(setup):
    config = TraceConfig(max_feature_nodes=30, memory_gb=None)
    graph = attribute(setup, PROMPT, config)
    assert isinstance(graph, Graph)
    assert graph.settings["max_feature_nodes"] == 30 and graph.settings["memory_gb"] is None
    features = np.flatnonzero(graph.kind == NodeKind.FEATURE)
    assert len(features) == 30
    # every feature the pruned graph keeps already has a label (no second labelling pass)
    kept = np.flatnonzero(prune_graph(graph, config.node_threshold, config.edge_threshold).node_mask)
    kept_features = [int(i) for i in kept if graph.kind[i] == NodeKind.FEATURE]
    assert kept_features and all(graph.feature_labels.get(i) for i in kept_features)


def test_trace_prompt_records_the_whole_config(setup):
    config = TraceConfig(max_feature_nodes=20, node_threshold=0.7, max_n_logits=3, memory_gb=2.0)
    result = trace_prompt(setup, PROMPT, config)
    assert {k: result.graph.settings[k] for k in config.model_dump()} == config.model_dump()
    assert result.pruned.node_threshold == 0.7
    assert {"forward", "attribution", "prune", "total"} <= set(result.graph.timing_seconds)


def _logit_labels(graph: Graph) -> list[str]:
    return list(graph.logit_labels)


def test_answer_becomes_a_target_only_when_it_is_not_a_top_logit(setup):
    base = TraceConfig(max_n_logits=2, memory_gb=None)  # every active feature: the same feature rows
    # one thread for all three: the adaptive thread count (busy cores) would change summation order
    plain = attribute(setup, PROMPT, base, threads=1)
    top = plain.logit_labels[0]
    outsider = next(w for w in ("17", "42", "63", "81") if w not in plain.logit_labels)
    with_outsider = attribute(setup, PROMPT, base.model_copy(update={"answer": outsider}), threads=1)
    assert _logit_labels(with_outsider) == _logit_labels(plain) + [f"{outsider} (target)"]
    with_top = attribute(setup, PROMPT, base.model_copy(update={"answer": top}), threads=1)
    assert _logit_labels(with_top) == _logit_labels(plain)  # no duplicate node for a top logit
    # the same edges into the shared nodes: the answer adds a row, it changes none (up to float
    # rounding: the logit rows' batch grows by one row, and the matmul kernels follow its shape)
    n = plain.edges.shape[0]
    scale = float(np.abs(plain.edges).max())
    np.testing.assert_allclose(with_outsider.edges[:n], plain.edges, rtol=1e-5, atol=1e-6 * scale)
