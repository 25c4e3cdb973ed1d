"""The viewer in a real browser (headless Chromium): draw, hover, click, prune, pin, trace, intervene.

Every test also checks that the console shows no error and that the page asked nothing of any
address but the viewer's own server.
"""

from __future__ import annotations

import json

import jsonschema
import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from circuits.viewer.app import ViewerState
from circuits.viewer.feature_pages import FeatureSource
from circuits.viewer.graphs_held import open_graph_file, pruned_view
from circuits.viewer.live import LiveModel
from tests.viewer.conftest import RunningServer, console_errors, requested_urls, schema

WAIT_S = 20


def wait(driver, predicate, timeout: float = WAIT_S):
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: predicate(d))


def text(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def drawn_nodes(driver) -> list:
    return driver.find_elements(By.CSS_SELECTOR, "#nodes [data-node-id]")


def assert_clean(driver, server) -> None:
    """No console error; every request went to the viewer's own server."""
    assert console_errors(driver) == []
    own = server.url.rstrip("/")
    foreign = [u for u in requested_urls(driver) if not u.startswith((own + "/", "data:", "blob:"))]
    assert foreign == []


def set_slider(driver, element_id: str, value: float) -> None:
    driver.execute_script(
        "const s = document.getElementById(arguments[0]); s.value = arguments[1];"
        "s.dispatchEvent(new Event('input'));", element_id, str(value))


@pytest.fixture(scope="module")
def view_server(graph_files, tiny_rm, tiny_index):
    state = ViewerState(features=FeatureSource(index=tiny_index, transcoder=tiny_rm.transcoder,
                                               transcoder_id=str(tiny_rm.transcoder_dir)))
    for path in graph_files[::-1]:  # the .npz first: the page opens it
        state.shelf.open(path)
    server = RunningServer(state)
    yield server
    server.stop()


def open_page(driver, server, fragment: str = "") -> None:
    driver.get("about:blank")  # a new document even when only the #fragment differs
    requested_urls(driver), console_errors(driver)  # drop earlier logs
    driver.get(server.url + fragment)
    wait(driver, lambda d: int(text(d, "node-count")) > 0)


def test_graph_drawn_clicked_and_walked_back(browser, view_server):
    held = view_server.state.shelf.get("g0")
    expected = pruned_view(held, held.node_threshold, held.edge_threshold)
    open_page(browser, view_server)
    assert len(drawn_nodes(browser)) == len(expected["nodes"]) == int(text(browser, "node-count"))
    assert int(text(browser, "edge-count")) == len(expected["links"])
    assert len(browser.find_elements(By.CSS_SELECTOR, "#edges path")) == len(expected["links"])

    # hover: the tooltip names the node
    top_logit = next(n for n in expected["nodes"] if n["is_target_logit"])
    logit_el = browser.find_element(By.CSS_SELECTOR, f'[data-node-id="{top_logit["node_id"]}"]')
    ActionChains(browser).move_to_element(logit_el).perform()
    wait(browser, lambda d: d.find_element(By.ID, "tooltip").is_displayed())
    assert top_logit["node_id"] in text(browser, "tooltip")

    # click the top logit: its panel lists its inputs; walk back along the strongest input
    logit_el.click()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f'#node-panel[data-node-id="{top_logit["node_id"]}"]'))
    assert text(browser, "panel-title") == top_logit["clerp"]
    incoming = {l["source"]: l["weight"] for l in expected["links"] if l["target"] == top_logit["node_id"]}
    rows = browser.find_elements(By.CSS_SELECTOR, "#inputs-table tr")
    assert {r.get_attribute("data-node-id") for r in rows} == set(incoming)
    current = top_logit["node_id"]
    for _ in range(12):
        rows = browser.find_elements(By.CSS_SELECTOR, "#inputs-table tr")
        if not rows:
            break
        current = rows[0].get_attribute("data-node-id")
        rows[0].click()
        wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f'#node-panel[data-node-id="{current}"]'))
    assert current.startswith("E_"), "walking back along the strongest inputs ends at a token"
    assert_clean(browser, view_server)


def test_slider_reprunes(browser, view_server):
    open_page(browser, view_server)
    before = int(text(browser, "node-count"))
    set_slider(browser, "node-threshold", 0.3)
    wait(browser, lambda d: int(text(d, "node-count")) != before)
    held = view_server.state.shelf.get("g0")
    expected = pruned_view(held, 0.3, held.edge_threshold)
    wait(browser, lambda d: int(text(d, "node-count")) == len(expected["nodes"]))
    assert len(drawn_nodes(browser)) == len(expected["nodes"]) < before
    assert f"{expected['metadata']['scores']['replacement_pruned']:.3f}" in text(browser, "scores")
    assert_clean(browser, view_server)


def test_feature_page_in_panel(browser, view_server):
    open_page(browser, view_server)
    feature = next(n for n in browser.execute_script("return window.circuitsViewer.state.doc.nodes")
                   if n["feature_type"] == "cross layer transcoder")
    browser.find_element(By.CSS_SELECTOR, f'[data-node-id="{feature["node_id"]}"]').click()
    layer, index = int(feature["layer"]), int(feature["node_id"].split("_")[1])
    wait(browser, lambda d: f"Feature {layer}:{index}" in text(d, "feature-page"))
    assert browser.find_elements(By.CSS_SELECTOR, "#feature-page #histogram rect")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#neighbours tr")) > 0
    assert_clean(browser, view_server)


def test_pins_and_supernodes_saved_in_qparams(browser, view_server, tmp_path):
    open_page(browser, view_server)
    ids = [n.get_attribute("data-node-id") for n in drawn_nodes(browser)[:3]]
    for node_id in ids:
        browser.find_element(By.CSS_SELECTOR, f'[data-node-id="{node_id}"]').click()
        wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f'#node-panel[data-node-id="{node_id}"]'))
        browser.find_element(By.ID, "pin-btn").click()
    browser.find_element(By.ID, "supernode-name").send_keys("my group")
    browser.find_element(By.ID, "group-btn").click()
    assert "my group" in text(browser, "supernode-list")
    doc = browser.execute_script("return window.circuitsViewer.exportDoc()")
    jsonschema.validate(doc, schema("neuronpedia-graph-schema.json"))
    assert doc["qParams"]["pinnedIds"] == ids
    assert doc["qParams"]["supernodes"] == [["my group", *ids]]
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(doc))
    qparams = open_graph_file(saved).qparams  # reopening the file gives the same state back
    assert qparams["pinnedIds"] == ids and qparams["supernodes"] == [["my group", *ids]]
    # "show pinned only": the supernode is one node; its edge to a fourth pinned node sums its members'
    links = browser.execute_script("return window.circuitsViewer.state.doc.links")
    fourth = next(l["target"] for l in links if l["source"] in ids and l["target"] not in ids)
    browser.find_element(By.CSS_SELECTOR, f'[data-node-id="{fourth}"]').click()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f'#node-panel[data-node-id="{fourth}"]'))
    browser.find_element(By.ID, "pin-btn").click()
    browser.find_element(By.ID, "pinned-only").click()
    wait(browser, lambda d: text(d, "node-count") == "2")
    assert text(browser, "edge-count") == "1"
    browser.find_element(By.CSS_SELECTOR, '[data-node-id="supernode:0"]').click()
    wait(browser, lambda d: d.find_elements(By.ID, "supernode-members"))
    assert {c.get_attribute("data-node-id") for c in browser.find_elements(By.CSS_SELECTOR, "#supernode-members span")} == set(ids)
    summed = sum(l["weight"] for l in links if l["source"] in ids and l["target"] == fourth)
    shown = browser.find_element(By.CSS_SELECTOR, "#outputs-table tr td.w").text
    assert float(shown) == pytest.approx(summed, abs=1e-3)
    browser.find_element(By.ID, "pinned-only").click()
    browser.find_element(By.ID, "save-btn").click()
    wait(browser, lambda d: "saved" in text(d, "message"))
    assert view_server.state.shelf.get("g0").qparams["pinnedIds"] == [*ids, fourth]
    assert_clean(browser, view_server)


def test_unknown_node_id_is_a_clear_message(browser, view_server):
    open_page(browser, view_server, "#graph=g0&node=99_99_99")
    wait(browser, lambda d: "unknown node id 99_99_99" in text(d, "message"))
    assert_clean(browser, view_server)


@pytest.fixture(scope="module")
def live_server(tiny_rm, tiny_index):
    live = LiveModel(tiny_rm)
    state = ViewerState(live=live, features=FeatureSource(index=tiny_index, transcoder=tiny_rm.transcoder,
                                                          loaded=tiny_rm.loaded, model_lock=live.lock))
    server = RunningServer(state)
    yield server
    server.stop()


def test_trace_and_intervene_through_the_page(browser, live_server):
    requested_urls(browser), console_errors(browser)
    browser.get(live_server.url)
    wait(browser, lambda d: d.find_element(By.ID, "prompt").is_displayed())
    # a prompt the tokenizer cannot handle: one clear message, no graph
    browser.find_element(By.ID, "prompt").send_keys("calc: zebra+59=")
    browser.find_element(By.ID, "trace-btn").click()
    wait(browser, lambda d: "does not know" in text(d, "message"))
    prompt = browser.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys("calc: 12+34=")
    browser.find_element(By.ID, "trace-btn").click()
    wait(browser, lambda d: "calc : 12 + 34 =" in text(d, "prompt-line") and int(text(d, "node-count")) > 0, 60)
    held = live_server.state.shelf.get(live_server.state.shelf.list()[-1]["id"])
    assert held.graph.prompt == "calc: 12+34="
    assert int(text(browser, "node-count")) == len(pruned_view(held, 0.8, 0.98)["nodes"])

    # intervene: ablate the first feature, generate two tokens
    feature = next(n for n in browser.execute_script("return window.circuitsViewer.state.doc.nodes")
                   if n["feature_type"] == "cross layer transcoder")
    browser.find_element(By.CSS_SELECTOR, f'[data-node-id="{feature["node_id"]}"]').click()
    wait(browser, lambda d: d.find_elements(By.ID, "add-iv-btn")).__getitem__(0).click()
    gen = browser.find_element(By.ID, "generate-n")
    gen.clear()
    gen.send_keys("2")
    browser.find_element(By.ID, "intervene-btn").click()
    wait(browser, lambda d: d.find_elements(By.ID, "intervene-table"), 60)
    rows = browser.find_elements(By.CSS_SELECTOR, "#intervene-table tr")
    assert len(rows) > 2
    assert "before:" in text(browser, "generated-before") and "after:" in text(browser, "generated-after")
    assert_clean(browser, live_server)


def long_prompt_graph(n_pos: int = 400, kept=(3, 4, 150, 399)):
    """Two layers over `n_pos` positions; a feature at each `kept` position reads its token and
    writes to the one logit: every other position carries no node once pruned."""
    import numpy as np

    from graphs import Graph, make_node_table

    kept = list(kept)
    lpf = np.array([(0, p, i) for i, p in enumerate(kept)])
    errors = np.array([(l, p) for l in range(2) for p in range(1, n_pos)])
    table = make_node_table(lpf, np.ones(len(kept)), errors, list(range(n_pos)), [7], 2)
    n_f, n_err = len(kept), len(errors)
    edges = np.zeros((n_f + 1, n_f + n_err + n_pos), dtype=np.float32)
    edges[np.arange(n_f), n_f + n_err + np.array(kept)] = 1.0
    edges[n_f, :n_f] = 1.0
    tokens = ["<bos>"] + [f" w{p}" for p in range(1, n_pos)]
    return Graph(edges=edges, **table, logit_probabilities=np.array([0.9]), logit_labels=["w"],
                 prompt="".join(tokens[1:]), token_ids=list(range(n_pos)), token_strs=tokens, n_layers=2)


def test_long_prompt_folds_positions_without_nodes(browser):
    """A 400-token prompt whose graph lives at 4 positions: 4 token columns and 3 folded runs
    (1-2, 5-149, 151-398) on the axis; the prompt is shown whole with those 4 tokens highlighted."""
    state = ViewerState()
    held = state.shelf.add("long", long_prompt_graph(), {}, "npz")
    held.node_threshold = held.edge_threshold = 1.0
    server = RunningServer(state)
    try:
        open_page(browser, server)
        labels = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#viewport text.token")]
        assert labels == ["w3", "w4", "w150", "w399"]
        folds = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#viewport text.fold-label")]
        assert folds == ["0–2", "5–149", "151–398"]
        kept = [e.text.strip() for e in browser.find_elements(By.CSS_SELECTOR, "#prompt-line .kept")]
        assert kept == ["w3", "w4", "w150", "w399"]
        assert " w200 w201" in text(browser, "prompt-line")
        width = browser.execute_script("return window.circuitsViewer.state.size.w")
        assert width < 4 * 200 + 3 * 40 + 100  # not 400 columns wide
        assert_clean(browser, server)
    finally:
        server.stop()
