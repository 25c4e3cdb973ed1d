"""`circuits trace` / `circuits prune` end to end on the tiny built-in model, and their bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from circuits.cli.main import app
from tests.circuits.attribution_checks import random_transcoder
from transcoders.formats import save_transcoder

PROMPT = "calc: 36+59="


@pytest.fixture(scope="module")
def tc_dir(world_tiny, tmp_path_factory):
    cfg = world_tiny.model.cfg
    tc = random_transcoder(cfg.n_layers, cfg.d_model, "clt", n_features=64, seed=11, threshold=0.5)
    return save_transcoder(tc, tmp_path_factory.mktemp("tc") / "clt", model_name="world-tiny")


def _run(*args):
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_trace_writes_viewer_json_and_full_graph_that_reprunes(world_tiny, tc_dir, tmp_path):
    out, full = tmp_path / "g.json", tmp_path / "g.npz"
    code, text = _run("trace", PROMPT, "--model", "world-tiny", "--transcoders", str(tc_dir),
                      "-o", str(out), "--full", str(full), "--json")
    assert code == 0, text
    summary = json.loads(text)
    assert summary["tokens"][-1].strip() == "="
    assert summary["counts"]["nodes_after"] < summary["counts"]["nodes_before"]
    # the printed scores are those of the saved full graph, pruned at the default thresholds
    from graphs import compute_scores, load_graph, prune_graph

    saved = load_graph(full)
    expected = compute_scores(saved, prune_graph(saved, 0.8, 0.98))
    assert summary["scores"] == pytest.approx(expected, rel=1e-9)
    assert 0.5 < summary["scores"]["completeness"] <= 1  # a random CLT still explains most of world-tiny's logit
    viewer = json.loads(out.read_text())
    assert {"metadata", "qParams", "nodes", "links"} <= set(viewer)
    ids = {n["node_id"] for n in viewer["nodes"]}
    assert all(link["source"] in ids and link["target"] in ids for link in viewer["links"])
    assert viewer["metadata"]["scores"]["completeness"] == pytest.approx(summary["scores"]["completeness"])
    # re-pruning the saved full graph with the same thresholds gives the same pruned graph
    out2 = tmp_path / "g2.json"
    code, text = _run("prune", str(full), "-o", str(out2), "--json")
    assert code == 0, text
    assert json.loads(text)["counts"] == summary["counts"]
    # a looser node threshold keeps at least as many nodes
    code, text = _run("prune", str(full), "--node-threshold", "0.95", "--json")
    assert json.loads(text)["counts"]["nodes_after"] >= summary["counts"]["nodes_after"]


def test_trace_contrast_target(world_tiny, tc_dir):
    code, text = _run("trace", "Fact: the capital of the state containing Dallas is", "--model", "world-tiny",
                      "--transcoders", str(tc_dir), "--target", "Austin", "--contrast", "Albany", "--json")
    assert code == 0, text
    labels = [lg["label"] for lg in json.loads(text)["logits"]]
    assert "Austin - Albany" in labels


@pytest.mark.parametrize("args,message", [
    (["   "], "prompt is empty"),
    (["calc: 36+59= zorblax"], "does not know: zorblax"),
    ([" ".join(["calc"] * 500)], "context is"),
    ([PROMPT, "--target", "notaword"], "not a single token"),
    ([PROMPT, "-o", "/nonexistent-dir/g.json"], "does not exist"),
])
def test_trace_bad_input_is_one_line(world_tiny, tc_dir, tmp_path, args, message):
    code, text = _run("trace", *args[:1], "--model", "world-tiny", "--transcoders", str(tc_dir), *args[1:])
    assert code != 0
    assert message in text
    assert "Traceback" not in text
    assert len(text.strip().splitlines()) == 1


def test_transcoders_that_do_not_fit_the_model(world_tiny, tmp_path):
    cfg = world_tiny.model.cfg
    wrong = save_transcoder(random_transcoder(cfg.n_layers, cfg.d_model + 8, "plt"), tmp_path / "wrong")
    code, text = _run("trace", PROMPT, "--model", "world-tiny", "--transcoders", str(wrong))
    assert code != 0 and "d_model" in text and "Traceback" not in text


def test_prune_bad_file(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a graph")
    code, text = _run("prune", str(bad))
    assert code != 0 and "Traceback" not in text and len(text.strip().splitlines()) == 1


def test_nothing_partial_is_written_on_error(world_tiny, tc_dir, tmp_path):
    out = tmp_path / "g.json"
    code, _ = _run("trace", "zorblax", "--model", "world-tiny", "--transcoders", str(tc_dir), "-o", str(out))
    assert code != 0 and not out.exists() and not list(tmp_path.iterdir())
