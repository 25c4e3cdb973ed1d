"""The viewer tells the truth about scores: a pruned graph JSON holds no full graph, so its "full"
scores are the ones its metadata carries, and whatever the page recomputes from the JSON's own edges
is labelled as relative to the file (issue 22)."""

from __future__ import annotations

import json
import math

import pytest

from circuits.viewer.app import ViewerState
from circuits.viewer.graphs_held import pruned_view
from graphs import prune_graph, write_viewer_json
from tests.graphs.hand_graph import hand_graph
from tests.viewer.conftest import RunningServer
from tests.viewer.test_browser import assert_clean, open_page, set_slider, text, wait


@pytest.fixture(scope="module")
def pruned_json(tmp_path_factory):
    """The hand graph pruned at (0.5, 0.9) as viewer JSON: its metadata scores differ from anything
    the kept edges alone can give (full 0.719 / 0.899, pruned 0.312 / 0.651)."""
    path = tmp_path_factory.mktemp("honest") / "pruned.json"
    graph = hand_graph()
    write_viewer_json(graph, prune_graph(graph, 0.5, 0.9), path)
    return path, json.loads(path.read_text())["metadata"]["scores"]


def fixed3(value: float) -> str:
    """JavaScript's toFixed(3) (half away from zero, where Python's format rounds half to even)."""
    return f"{math.floor(value * 1000 + 0.5) / 1000:.3f}"


def held_json(path):
    state = ViewerState()
    return state, state.shelf.open(path)


def test_json_view_shows_the_files_scores(pruned_json):
    path, written = pruned_json
    _, held = held_json(path)
    doc = pruned_view(held, 1.0, 1.0)  # the file as written
    assert doc["metadata"]["scores"] == pytest.approx(written)
    assert doc["metadata"]["viewer"]["scores_basis"] == "file"
    assert "metadata" in doc["metadata"]["viewer"]["scores_note"]


def test_json_reprune_labels_recomputed_scores(pruned_json):
    path, written = pruned_json
    _, held = held_json(path)
    doc = pruned_view(held, 0.3, 1.0)  # shows less than the file
    scores, viewer = doc["metadata"]["scores"], doc["metadata"]["viewer"]
    assert scores["replacement"] == pytest.approx(written["replacement"])  # full stays the file's
    assert scores["completeness"] == pytest.approx(written["completeness"])
    assert scores["replacement_pruned"] is None  # the file cannot tell this view's pruned scores
    within = viewer["scores_within_file"]
    assert 0.0 <= within["replacement"] < 1.0 and within["replacement"] != pytest.approx(written["replacement"])
    assert "file" in viewer["scores_note"]


def test_json_without_scores_shows_none(pruned_json, tmp_path):
    path, _ = pruned_json
    doc = json.loads(path.read_text())
    del doc["metadata"]["scores"]  # circuit-tracer's files carry none
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(doc))
    _, held = held_json(bare)
    view = pruned_view(held, 1.0, 1.0)
    assert set(view["metadata"]["scores"].values()) == {None}
    assert "no scores" in view["metadata"]["viewer"]["scores_note"]


def test_npz_scores_are_recomputed(tmp_path):
    from graphs import save_graph
    from graphs.scores import compute_scores

    graph = hand_graph()
    save_graph(graph, tmp_path / "h.npz")
    _, held = held_json(tmp_path / "h.npz")
    doc = pruned_view(held, 0.5, 0.9)
    assert doc["metadata"]["scores"] == pytest.approx(compute_scores(graph, prune_graph(graph, 0.5, 0.9)))
    assert doc["metadata"]["viewer"]["scores_basis"] == "recomputed"


def test_page_shows_the_files_full_scores(browser, pruned_json):
    path, written = pruned_json
    state, _ = held_json(path)
    server = RunningServer(state)
    try:
        open_page(browser, server)
        shown = text(browser, "scores")
        assert f"full {fixed3(written['replacement'])}" in shown and f"full {fixed3(written['completeness'])}" in shown
        assert f"replacement {fixed3(written['replacement_pruned'])}" in shown
        assert "file's metadata" in shown
        set_slider(browser, "node-threshold", 0.3)
        wait(browser, lambda d: "within the file" in text(d, "scores"))
        shown = text(browser, "scores")
        assert f"full {fixed3(written['replacement'])}" in shown  # still the file's full score
        assert_clean(browser, server)
    finally:
        server.stop()


def test_traced_json_as_written_keeps_its_pruned_scores(graph_files):
    """A real trace's JSON re-pruned at (1, 1) is the file as written: pruned scores are the file's."""
    written = json.loads(graph_files[0].read_text())["metadata"]["scores"]
    _, held = held_json(graph_files[0])
    doc = pruned_view(held, 1.0, 1.0)
    assert doc["metadata"]["viewer"]["scores_within_file"] is None
    assert doc["metadata"]["scores"] == pytest.approx(written)
