"""Viewer JSON, GraphML and the summary, checked on the hand graph (pruned at 0.8 / 0.98 it keeps
F1, F2, R0, E1, L0, L1 and 8 edges; see test_prune_scores.py)."""

from __future__ import annotations

import json

import networkx as nx
import pytest

from graphs import (
    GraphError,
    compute_scores,
    format_summary,
    prune_graph,
    summarize,
    to_viewer_json,
    write_graphml,
    write_viewer_json,
)
from tests.graphs.hand_graph import EDGES, hand_graph
from tests.graphs.random_graph import random_graph

NODE_FIELDS = {"node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob", "is_target_logit",
               "run_idx", "reverse_ctx_idx", "jsNodeId", "clerp", "influence", "activation"}


@pytest.fixture()
def hand():
    graph = hand_graph()
    return graph, prune_graph(graph)


def test_viewer_json_nodes(hand):
    graph, pruned = hand
    doc = to_viewer_json(graph, pruned)
    assert set(doc) == {"metadata", "qParams", "nodes", "links"}
    nodes = {n["node_id"]: n for n in doc["nodes"]}
    assert list(nodes) == ["0_3_1", "1_5_1", "0_-1_1", "E_11_1", "3_20_1", "3_21_1"]
    assert all(NODE_FIELDS <= set(n) for n in doc["nodes"])
    f2 = nodes["1_5_1"]
    assert (f2["feature_type"], f2["layer"], f2["ctx_idx"], f2["jsNodeId"]) == \
        ("cross layer transcoder", "1", 1, "1_5-0")
    assert f2["feature"] == (1 + 5) * (1 + 5 + 1) // 2 + 5  # Cantor pairing of (layer, feature)
    assert f2["clerp"] == "say x" and f2["activation"] == 1.5
    assert f2["influence"] == pytest.approx(0.375 / 1.0625)  # most influential: its own share
    assert f2["influence_raw"] == pytest.approx(0.375)
    assert nodes["0_3_1"]["influence"] == pytest.approx(0.875 / 1.0625)  # F2 + R0 + F1
    err = nodes["0_-1_1"]
    assert (err["feature"], err["feature_type"], err["jsNodeId"], err["activation"]) == \
        (-1, "mlp reconstruction error", "0_-1-1", None)
    emb = nodes["E_11_1"]
    assert (emb["layer"], emb["feature"], emb["feature_type"], emb["jsNodeId"]) == \
        ("E", 1, "embedding", "E_11-1")
    top = nodes["3_20_1"]
    assert (top["feature_type"], top["layer"], top["feature"], top["jsNodeId"]) == \
        ("logit", "3", 20, "L_20-1")
    assert top["is_target_logit"] and not nodes["3_21_1"]["is_target_logit"]
    assert top["token_prob"] == 0.75 and top["clerp"] == 'Output "x" (p=0.750)'


def test_viewer_json_links_are_kept_edges_with_raw_weights(hand):
    graph, pruned = hand
    doc = to_viewer_json(graph, pruned)
    assert len(doc["links"]) == 8
    index = {graph.node_id(i): i for i in range(graph.n_nodes)}
    for link in doc["links"]:
        t, s = index[link["target"]], index[link["source"]]
        assert link["weight"] == EDGES[(t, s)]
    ids = {n["node_id"] for n in doc["nodes"]}
    assert all(link["source"] in ids and link["target"] in ids for link in doc["links"])


def test_viewer_json_metadata(hand):
    graph, pruned = hand
    meta = to_viewer_json(graph, pruned)["metadata"]
    assert meta["prompt_tokens"] == ["a", " b"] and meta["prompt"] == "a b"
    assert meta["slug"] == "a-b" and meta["scan"] == "hand" and meta["schema_version"] == 1
    assert meta["node_threshold"] == 0.8
    assert meta["thresholds"] == {"node_threshold": 0.8, "edge_threshold": 0.98}
    assert meta["scores"] == compute_scores(graph, pruned)
    assert meta["scores"]["replacement_pruned"] == pytest.approx(0.53125)
    assert meta["counts"]["nodes_after"] == 6 and meta["counts"]["edges_before"] == 11
    assert meta["model"]["name"] == "hand" and meta["transcoders"]["hash"] == "abc"
    assert meta["timing_seconds"] == {"attribution": 0.5}
    assert meta["generation_settings"]["batch_size"] == 4


def test_write_viewer_json_round_trips_through_json(tmp_path, hand):
    graph, pruned = hand
    path = tmp_path / "graph.json"
    write_viewer_json(graph, pruned, path, slug="my-graph")
    doc = json.loads(path.read_text())
    assert doc == json.loads(json.dumps(to_viewer_json(graph, pruned, slug="my-graph")))
    assert doc["metadata"]["slug"] == "my-graph"
    with pytest.raises(GraphError, match="does not exist"):
        write_viewer_json(graph, pruned, tmp_path / "missing" / "g.json")


def test_viewer_json_on_random_graph_is_consistent():
    graph = random_graph(5)
    pruned = prune_graph(graph)
    doc = to_viewer_json(graph, pruned)
    assert len(doc["nodes"]) == pruned.n_nodes_after == doc["metadata"]["counts"]["nodes_after"]
    assert len(doc["links"]) == pruned.n_edges_after
    assert len({n["node_id"] for n in doc["nodes"]}) == len(doc["nodes"])
    json.dumps(doc, allow_nan=False)  # strict JSON


def test_graphml(tmp_path, hand):
    graph, pruned = hand
    path = tmp_path / "g.graphml"
    write_graphml(graph, pruned, path)
    loaded = nx.read_graphml(path)
    assert loaded.is_directed()
    assert set(loaded.nodes) == {"0_3_1", "1_5_1", "0_-1_1", "E_11_1", "3_20_1", "3_21_1"}
    assert loaded.number_of_edges() == 8
    f2 = loaded.nodes["1_5_1"]
    assert (f2["kind"], f2["layer"], f2["position"], f2["feature"]) == ("feature", 1, 1, 5)
    assert (f2["activation"], f2["label"]) == (1.5, "say x")
    assert f2["influence"] == pytest.approx(0.375)
    assert loaded.nodes["E_11_1"]["label"] == " b"
    assert loaded.edges["1_5_1", "3_20_1"]["weight"] == 2.0  # source -> target
    assert loaded.edges["0_3_1", "1_5_1"]["weight"] == -1.0


def test_summary(hand):
    graph, pruned = hand
    summary = summarize(graph, pruned, top_per_position=1)
    assert [lg["label"] for lg in summary["logits"]] == ["x", "y"]
    assert summary["logits"][0]["probability"] == 0.75
    assert summary["counts"]["nodes_before"] == 8 and summary["counts"]["nodes_after"] == 6
    assert summary["scores"]["completeness"] == pytest.approx(80 / 89)
    positions = summary["positions"]
    assert [p["token"] for p in positions] == ["a", " b"]
    assert positions[0]["features"] == []
    assert [f["node_id"] for f in positions[1]["features"]] == ["1_5_1"]  # F2 beats F1
    assert positions[1]["features"][0]["label"] == "say x"
    full = summarize(graph, pruned, top_per_position=3)
    assert [f["node_id"] for f in full["positions"][1]["features"]] == ["1_5_1", "0_3_1"]  # F0 pruned
    text = format_summary(full)
    assert "nodes 8 -> 6" in text and "say x" in text and "p=0.750" in text
    json.dumps(full, allow_nan=False)
