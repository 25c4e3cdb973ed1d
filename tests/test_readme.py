"""The README's Python example runs as written (on `world-tiny`, which builds in seconds; the slow
test runs it on `world` itself), and `circuits` exports exactly the names it documents."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _run_example(tmp_path, monkeypatch) -> dict:
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(readme_example(), str(README), "exec"), scope)  # noqa: S102 - our own README
    return scope


def test_public_api_is_five_names():
    import circuits

    assert sorted(circuits.__all__) == ["CircuitsError", "Graph", "ReplacementModel", "TraceConfig", "TraceResult"]
    for name in circuits.__all__:
        assert getattr(circuits, name).__name__ == name
    with pytest.raises(AttributeError):
        circuits.trace_tokens  # noqa: B018


def test_readme_example_runs(world_tiny, tmp_path, monkeypatch, capsys):
    import circuits

    load = circuits.ReplacementModel.load.__func__
    monkeypatch.setattr(circuits.ReplacementModel, "load", classmethod(
        lambda cls, model="world", *a, **kw: load(cls, "world-tiny" if model == "world" else model, *a, **kw)))
    scope = _run_example(tmp_path, monkeypatch)
    rm, result, after = scope["rm"], scope["result"], scope["after"]
    assert rm.name == "world-tiny" and isinstance(result, circuits.TraceResult)
    viewer = json.loads((tmp_path / "graph.json").read_text())
    pruned = result.prune(0.9, 0.98)
    assert len(viewer["nodes"]) == int(pruned.pruned.node_mask.sum())
    assert viewer["metadata"]["prompt"] == "calc: 36+59="
    # the saved full graph re-prunes to the same counts
    from graphs import load_graph, prune_graph

    full = load_graph(tmp_path / "graph.npz")
    assert int(prune_graph(full, 0.9, 0.98).node_mask.sum()) == len(viewer["nodes"])
    # intervening through the bundle equals the low-level call on the same tokens
    from circuits.interventions import intervene, parse_set

    direct = intervene(rm, "calc: 36+59=", [parse_set("1:5:17=2.0")])
    assert after.top_after == direct.top_after and after.kl == direct.kl
    assert "->" in capsys.readouterr().out


@pytest.mark.slow
def test_readme_example_runs_verbatim_on_world(tmp_path, monkeypatch):
    scope = _run_example(tmp_path, monkeypatch)
    assert scope["rm"].name == "world" and (tmp_path / "graph.json").is_file()
