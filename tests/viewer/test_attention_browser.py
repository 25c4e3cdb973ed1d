"""The viewer's attention panels in headless Chromium (a world-tiny graph traced with qk=True):
clicking a cross-position edge lists the heads carrying it with their loadings; clicking an
explained head shows its top query x key pairs and marginals; a contributor opens its node or its
feature page."""

from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By

from circuits.viewer.app import ViewerState
from circuits.viewer.feature_pages import FeatureSource
from tests.viewer.conftest import RunningServer
from tests.viewer.test_browser import assert_clean, open_page, text, wait


@pytest.fixture(scope="module")
def qk_server(tiny_rm, tiny_index, tmp_path_factory):
    result = tiny_rm.trace("calc: 36+59=", qk=True, qk_heads=12)
    path = result.save(tmp_path_factory.mktemp("qk") / "calc_qk.npz")
    state = ViewerState(features=FeatureSource(index=tiny_index, transcoder=tiny_rm.transcoder,
                                               transcoder_id=str(tiny_rm.transcoder_dir)))
    state.shelf.open(path)
    server = RunningServer(state)
    yield server
    server.stop()


def test_edge_heads_then_head_pairs(browser, qk_server):
    open_page(browser, qk_server)
    doc = browser.execute_script("return window.circuitsViewer.state.doc")
    explained = {(h["layer"], h["head"]) for h in doc["attention_heads"]}
    link = next(l for l in sorted(doc["links"], key=lambda l: -abs(l["weight"]))
                if any((h[0], h[1]) in explained for h in l.get("head_loadings", [])))
    path = browser.find_element(By.CSS_SELECTOR, f'#edges path[data-source="{link["source"]}"][data-target="{link["target"]}"]')
    browser.execute_script("arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}))", path)
    wait(browser, lambda d: d.find_elements(By.ID, "edge-panel"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#heads-table tr")
    assert [r.get_attribute("data-head") for r in rows] == [f"{h[0]}:{h[1]}" for h in link["head_loadings"]]
    first = next(r for r in rows if tuple(map(int, r.get_attribute("data-head").split(":"))) in explained)
    layer, head = map(int, first.get_attribute("data-head").split(":"))
    first.click()
    wait(browser, lambda d: d.find_elements(By.ID, "head-panel"))
    h = next(h for h in doc["attention_heads"] if (h["layer"], h["head"]) == (layer, head))
    assert f"Head L{layer} H{head}" in text(browser, "head-panel")
    pairs = browser.find_elements(By.CSS_SELECTOR, "#qk-pairs-table tr")
    assert [(r.get_attribute("data-node-id"), r.find_element(By.CSS_SELECTOR, "td.key-side").get_attribute("data-node-id"))
            for r in pairs] == [(p[0], p[1]) for p in h["pairs"]]
    assert [r.get_attribute("data-node-id") for r in browser.find_elements(By.CSS_SELECTOR, "#qk-q-table tr")] == \
        [m[0] for m in h["q_marginals"]]
    assert [r.get_attribute("data-node-id") for r in browser.find_elements(By.CSS_SELECTOR, "#qk-k-table tr")] == \
        [m[0] for m in h["k_marginals"]]
    # a feature contributor links to its feature page (its node's panel when the graph keeps it)
    def features(h):
        return [m[0] for m in h["q_marginals"] + h["k_marginals"]
                if not m[0].startswith(("E_", "bias")) and m[0].split("_")[1] != "-1"]

    h = next(h for h in doc["attention_heads"] if features(h))
    browser.execute_script("window.circuitsViewer.selectHead(arguments[0])", h)
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f'#head-panel[data-head="{h["layer"]}:{h["head"]}"]'))
    feature = features(h)[0]
    row = browser.find_element(By.CSS_SELECTOR, f'#qk-q-table tr[data-node-id="{feature}"], #qk-k-table tr[data-node-id="{feature}"]')
    row.click()
    l, f = feature.split("_")[:2]
    wait(browser, lambda d: f"Feature {l}:{f}" in (d.find_element(By.ID, "feature-page").text if d.find_elements(By.ID, "feature-page")
                                                   else d.find_element(By.ID, "qk-feature-page").text))
    assert_clean(browser, qk_server)
