"""Every JSON we write validates against Neuronpedia's published schemas; graph JSON reads back
(ours, old circuit-tracer error ids); feature pages export in circuit-tracer's feature format."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
import torch

from circuits.viewer.feature_pages import FeatureSource, export_feature_pages
from graphs import GraphError, NodeKind, prune_graph, to_viewer_json, write_viewer_json
from graphs.viewer_read import read_viewer_json, viewer_doc_to_graph
from tests.graphs.hand_graph import hand_graph
from tests.graphs.random_graph import random_graph
from tests.viewer.conftest import schema


@pytest.fixture(scope="module")
def graph_schema():
    return jsonschema.Draft7Validator(schema("neuronpedia-graph-schema.json"))


@pytest.mark.parametrize("graph", [hand_graph(), random_graph(1), random_graph(2, error_scale=0.0)],
                         ids=["hand", "random1", "random2"])
def test_written_graph_json_validates(graph, graph_schema, tmp_path):
    path = tmp_path / "g.json"
    write_viewer_json(graph, prune_graph(graph), path)
    doc = json.loads(path.read_text())
    graph_schema.validate(doc)
    assert "max_feature_nodes" not in doc["metadata"]["generation_settings"]  # was null: schema wants int
    assert doc["metadata"]["pruning_settings"] == {"node_threshold": 0.8, "edge_threshold": 0.98}


def test_traced_graph_json_validates(graph_files, graph_schema):
    graph_schema.validate(json.loads(graph_files[0].read_text()))


def test_error_ids_follow_current_circuit_tracer(tiny_trace):
    doc = to_viewer_json(tiny_trace.graph, prune_graph(tiny_trace.graph, 1.0, 1.0))
    errors = [n for n in doc["nodes"] if n["feature_type"] == "mlp reconstruction error"]
    assert errors and all(n["node_id"] == f"{n['layer']}_-1_{n['ctx_idx']}" for n in errors)
    assert len({n["node_id"] for n in doc["nodes"]}) == len(doc["nodes"])


def test_graph_json_round_trip(graph_files):
    graph, qparams = read_viewer_json(graph_files[0])
    doc = json.loads(graph_files[0].read_text())
    again = to_viewer_json(graph, prune_graph(graph, 1.0, 1.0))
    assert {n["node_id"] for n in again["nodes"]} <= {n["node_id"] for n in doc["nodes"]}
    links = {(l["source"], l["target"]): l["weight"] for l in doc["links"]}
    assert {(l["source"], l["target"]): l["weight"] for l in again["links"]}.items() <= links.items()
    assert graph.token_strs == doc["metadata"]["prompt_tokens"]
    assert qparams["pinnedIds"] == []
    logits = [n for n in doc["nodes"] if n["feature_type"] == "logit"]
    assert [n["node_id"] for n in again["nodes"] if n["feature_type"] == "logit"] == [n["node_id"] for n in logits]
    assert again["nodes"][-len(logits)]["is_target_logit"]


def old_style(doc: dict) -> dict:
    """The same document with circuit-tracer's old error ids "0_{layer}_{pos}"."""
    rename = {n["node_id"]: f"0_{n['layer']}_{n['ctx_idx']}" for n in doc["nodes"]
              if n["feature_type"] == "mlp reconstruction error"}
    out = json.loads(json.dumps(doc))
    for n in out["nodes"]:
        n["node_id"] = rename.get(n["node_id"], n["node_id"])
    for link in out["links"]:
        link["source"] = rename.get(link["source"], link["source"])
    return out


def test_reads_old_error_ids():
    graph = hand_graph()
    doc = to_viewer_json(graph, prune_graph(graph))
    new_graph, _ = viewer_doc_to_graph(doc)
    old_graph, _ = viewer_doc_to_graph(old_style(doc))
    assert np.array_equal(old_graph.adjacency, new_graph.adjacency)
    errors = old_graph.kind == NodeKind.ERROR
    assert errors.sum() == 1 and old_graph.layer[errors][0] == 0 and old_graph.position[errors][0] == 1
    assert old_graph.node_id(int(np.flatnonzero(errors)[0])) == "0_-1_1"  # written in the current form


def test_old_ids_colliding_with_a_feature_are_refused():
    graph = hand_graph()
    doc = old_style(to_viewer_json(graph, prune_graph(graph, 1.0, 1.0)))
    doc["nodes"][0]["node_id"] = "0_0_1"  # a layer-0 feature 0 at position 1 ...
    doc["nodes"].append({**doc["nodes"][0], "node_id": "0_0_1"})  # ... twice
    with pytest.raises(GraphError, match="share the id 0_0_1"):
        viewer_doc_to_graph(doc)


@pytest.mark.parametrize("content, message", [
    ('{"metadata": {}, "nodes": [', "not valid JSON"),
    ('{"hello": 1}', "not an attribution graph JSON"),
    ('[1, 2]', "not an attribution graph JSON"),
])
def test_bad_graph_json_is_one_line(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(GraphError, match=message) as info:
        read_viewer_json(path)
    assert "\n" not in str(info.value)


def test_link_to_unknown_node_is_refused(tmp_path):
    graph = hand_graph()
    doc = to_viewer_json(graph, prune_graph(graph))
    doc["links"].append({"source": "7_7_7", "target": doc["nodes"][0]["node_id"], "weight": 1.0})
    with pytest.raises(GraphError, match="7_7_7"):
        viewer_doc_to_graph(doc)


def test_feature_pages_validate_and_export(tiny_rm, tiny_index, tiny_trace, tmp_path):
    tc = tiny_rm.transcoder
    source = FeatureSource(index=tiny_index, transcoder=tc, loaded=tiny_rm.loaded,
                           transcoder_id=str(tiny_rm.transcoder_dir))
    g = tiny_trace.graph
    feats = sorted({(int(l), int(f)) for l, f, k in zip(g.layer, g.feature, g.kind) if k == NodeKind.FEATURE})[:4]
    paths = export_feature_pages(source, feats, tmp_path / "features")
    validator = jsonschema.Draft7Validator(schema("neuronpedia-feature-details-schema.json"))
    for (layer, feature), path in zip(feats, paths):
        page = json.loads(path.read_text())
        validator.validate(page)
        assert path.name == f"{page['index']}.json"
        contexts = tiny_index.top_contexts(layer, feature)
        examples = page["examples_quantiles"][0]["examples"] if page["examples_quantiles"] else []
        assert [e["tokens"] for e in examples] == [c.tokens for c in contexts]
        assert page["activation_frequency"] == pytest.approx(tiny_index.frequency(layer, feature))
        assert len(page["top_logits"]) == len(page["bottom_logits"]) == 10
        # neighbours: cosine of summed decoders, checked directly for the first one
        nb = page["neighbours"][0]
        a = tc.decoder_rows(layer, torch.tensor([feature]))[0].sum(0)
        b = tc.decoder_rows(nb["layer"], torch.tensor([nb["feature"]]))[0].sum(0)
        assert nb["cosine"] == pytest.approx(float(a @ b / (a.norm() * b.norm())), abs=1e-5)
        if examples and page["histogram_edges"]:
            assert sum(page["histogram"]) > 0


def test_reads_a_neuronpedia_style_download():
    """Integer layers, layer-offset feature ids, attention-feature nodes, extra fields, no model."""
    doc = {
        "metadata": {"slug": "x", "scan": "gemma-2-2b", "prompt_tokens": ["<bos>", "Hi"], "prompt": "Hi"},
        "qParams": {"pinnedIds": ["1_77_1"], "supernodes": [["s", "1_77_1"]], "linkType": "both"},
        "nodes": [
            {"node_id": "E_9_1", "feature": 1, "layer": "E", "ctx_idx": 1, "feature_type": "embedding",
             "jsNodeId": "E_9-1", "clerp": ""},
            {"node_id": "0_5_1", "feature": 5, "layer": 0, "ctx_idx": 1, "feature_type": "lorsa",
             "jsNodeId": "0_5-0", "clerp": "attn", "activation": 2.0, "qk_tracing_results": {}},
            {"node_id": "1_77_1", "feature": 1077, "layer": 1, "ctx_idx": 1,
             "feature_type": "cross layer transcoder", "jsNodeId": "1_77-0", "clerp": "hello", "activation": 1.5},
            {"node_id": "0_1_1", "feature": -1, "layer": "1", "ctx_idx": 1,
             "feature_type": "mlp reconstruction error", "jsNodeId": "1_1-0", "clerp": ""},
            {"node_id": "27_42_1", "feature": 42, "layer": "27", "ctx_idx": 1, "feature_type": "logit",
             "jsNodeId": "L_42-1", "clerp": 'Output " there" (p=0.500)', "token_prob": 0.5},
        ],
        "links": [{"source": "E_9_1", "target": "0_5_1", "weight": 1.0},
                  {"source": "0_5_1", "target": "1_77_1", "weight": 0.5},
                  {"source": "0_1_1", "target": "27_42_1", "weight": -0.25},
                  {"source": "1_77_1", "target": "27_42_1", "weight": 2.0}],
    }
    graph, qparams = viewer_doc_to_graph(doc)
    ids = [graph.node_id(i) for i in range(graph.n_nodes)]
    assert ids == ["0_5_1", "1_77_1", "1_-1_1", "E_9_1", "27_42_1"]
    assert graph.n_layers == 26 and graph.logit_labels == [" there"] and graph.token_ids == [-1, 9]
    assert graph.adjacency[4, 1] == 2.0 and graph.adjacency[4, 2] == -0.25 and graph.adjacency[1, 0] == 0.5
    assert graph.feature_labels == {0: "attn", 1: "hello"} and qparams["pinnedIds"] == ["1_77_1"]
