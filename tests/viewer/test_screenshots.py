"""Screenshots of the page for the two case-study prompts on the full `world` model, written to
docs/viewer-calc.png and docs/viewer-kobe.png (slow: building `world` and its CLT takes minutes;
the committed PNGs were made by this test: `python -m pytest -q -m slow tests/viewer/test_screenshots.py`).
CIRCUITS_SCREENSHOT_MODEL=world-tiny runs the same steps quickly, writing into a temporary folder;
CIRCUITS_WORLD_HOME=DIR reads an already built `world` (and its default CLT) from that cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By

from circuits.studies.demos.two_hop import KOBE
from circuits.viewer.app import ViewerState
from circuits.viewer.feature_pages import FeatureSource
from circuits.viewer.live import LiveModel
from tests.viewer.conftest import REPO, RunningServer, console_errors, requested_urls
from tests.viewer.test_browser import assert_clean, text, wait

PROMPTS = {"calc": "calc: 36+59=", "kobe": KOBE[0]}


@pytest.mark.slow
def test_case_study_screenshots(browser, tmp_path, monkeypatch):
    from circuits.replacement.model import ReplacementModel

    model = os.environ.get("CIRCUITS_SCREENSHOT_MODEL", "world")
    if os.environ.get("CIRCUITS_WORLD_HOME"):
        monkeypatch.setenv("CIRCUITS_HOME", os.environ["CIRCUITS_WORLD_HOME"])
    out_dir = REPO / "docs" if model == "world" else tmp_path
    rm = ReplacementModel.load(model, progress=False)
    live = LiveModel(rm)
    state = ViewerState(live=live, features=FeatureSource(index=rm.index, transcoder=rm.transcoder,
                                                          loaded=rm.loaded, model_lock=live.lock))
    for prompt in PROMPTS.values():
        result = rm.trace(prompt)
        state.shelf.add(prompt, result.graph, {}, "traced")
    server = RunningServer(state)
    browser.set_window_size(1600, 1000)
    try:
        for gid, (name, prompt) in zip(("g0", "g1"), PROMPTS.items()):
            browser.get("about:blank")
            requested_urls(browser), console_errors(browser)
            browser.get(f"{server.url}#graph={gid}")
            wait(browser, lambda d: prompt in text(d, "prompt-line") and int(text(d, "node-count")) > 0)
            top = next(n for n in browser.execute_script("return window.circuitsViewer.state.doc.nodes")
                       if n["is_target_logit"])
            browser.find_element(By.CSS_SELECTOR, f'[data-node-id="{top["node_id"]}"]').click()
            wait(browser, lambda d: d.find_elements(By.ID, "inputs-table"))
            path = Path(out_dir) / f"viewer-{name}.png"
            assert browser.save_screenshot(str(path)) and path.stat().st_size > 10_000
            assert_clean(browser, server)
    finally:
        server.stop()
        browser.set_window_size(1400, 900)
    if model == "world":
        done_when(browser, rm, tmp_path)


def done_when(browser, rm, tmp_path) -> None:
    """The issue's newcomer: trace calc to g.json, view it, click the "95" logit, walk back to the
    operand tokens through the panel."""
    from circuits.viewer.graphs_held import open_graph_file

    rm.trace(PROMPTS["calc"]).write_json(tmp_path / "g.json")
    state = ViewerState()
    graph, qparams, source = open_graph_file(tmp_path / "g.json")
    state.shelf.add("g.json", graph, qparams, source)
    server = RunningServer(state)
    try:
        browser.get("about:blank")
        requested_urls(browser), console_errors(browser)
        browser.get(server.url)
        wait(browser, lambda d: int(text(d, "node-count")) > 0)
        nodes = browser.execute_script("return window.circuitsViewer.state.doc.nodes")
        top = next(n for n in nodes if n["is_target_logit"])
        assert top["clerp"].startswith('Output "95"')
        browser.find_element(By.CSS_SELECTOR, f'[data-node-id="{top["node_id"]}"]').click()
        wait(browser, lambda d: d.find_elements(By.ID, "inputs-table"))
        inputs = text(browser, "inputs-table")
        assert 'token "36"' in inputs and 'token "59"' in inputs
        row = next(r for r in browser.find_elements(By.CSS_SELECTOR, "#inputs-table tr") if 'token "36"' in r.text)
        row.click()
        wait(browser, lambda d: text(d, "panel-title") == 'token "36"')
        assert_clean(browser, server)
    finally:
        server.stop()
