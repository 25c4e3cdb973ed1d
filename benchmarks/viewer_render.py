"""How fast the viewer page draws a large graph in headless Chromium.

    python benchmarks/viewer_render.py [--nodes 1000] [--edges 10000] [--repeat 5]

Builds a random graph obeying the Graph contract (features over 8 layers x 16 positions, edges up
in layer), serves it with `circuits view`'s app in a thread, opens the page and prints the median
of `--repeat` runs of: the server pruning and sending the graph JSON, the page drawing it (layout
+ SVG), and one hover (highlighting a node's strongest edges). Needs Debian's chromium and
chromium-driver. Figures depend on the machine; report medians and whether it was shared.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time

import numpy as np

from circuits.viewer.app import ViewerState, create_app
from circuits.viewer.headless import headless_chromium
from circuits.viewer.server import ServerThread
from graphs import Graph, make_node_table

N_LAYERS, N_POS = 8, 16


def random_graph(n_nodes: int, n_edges: int, seed: int = 0) -> Graph:
    rng = np.random.default_rng(seed)
    n_logits, n_err = 5, N_LAYERS * (N_POS - 1)
    n_feat = max(n_nodes - n_logits - N_POS - n_err, 1)
    layer = rng.integers(0, N_LAYERS, n_feat)
    pos = rng.integers(1, N_POS, n_feat)
    lpf = np.stack([layer, pos, np.arange(n_feat)], 1)
    errors = np.array([(l, p) for l in range(N_LAYERS) for p in range(1, N_POS)])
    table = make_node_table(lpf, rng.uniform(0.1, 3, n_feat), errors, list(range(N_POS)),
                            list(range(100, 100 + n_logits)), N_LAYERS)
    kind, lay, ps = table["kind"], table["layer"], table["position"]
    n = kind.shape[0]
    adjacency = np.zeros((n, n), dtype=np.float32)
    targets = np.flatnonzero((kind == 0) | (kind == 3))
    placed = 0
    while placed < n_edges:
        t = rng.choice(targets, 4096)
        s = rng.integers(0, n, 4096)
        ok = (lay[s] < lay[t]) & (ps[s] <= ps[t]) & (adjacency[t, s] == 0)
        adjacency[t[ok], s[ok]] = rng.normal(size=int(ok.sum()))
        placed = int(np.count_nonzero(adjacency))
    # every feature reads its token and writes to a logit, every error writes to a logit: all are drawn
    feats, errs = np.flatnonzero(kind == 0), np.flatnonzero(kind == 1)
    emb, logits = np.flatnonzero(kind == 2), np.flatnonzero(kind == 3)
    adjacency[feats, emb[ps[feats]]] = rng.uniform(0.5, 1.5, feats.shape[0])
    adjacency[rng.choice(logits, feats.shape[0]), feats] = rng.normal(size=feats.shape[0])
    adjacency[rng.choice(logits, errs.shape[0]), errs] = rng.normal(size=errs.shape[0])
    probs = rng.dirichlet(np.ones(n_logits)) * 0.9
    return Graph(adjacency=adjacency, **table, logit_probabilities=probs,
                 logit_labels=[str(i) for i in range(n_logits)], prompt="x " * (N_POS - 1),
                 token_ids=list(range(N_POS)), token_strs=[f"t{i}" for i in range(N_POS)], n_layers=N_LAYERS)


JS_RENDER = """
const done = arguments[arguments.length - 1];
const v = window.circuitsViewer;
const t0 = performance.now();
fetch(`/api/graphs/${v.state.gid}?node_threshold=1&edge_threshold=1`).then((r) => r.json()).then(() => {
  const t1 = performance.now();
  v.render(true);
  const t2 = performance.now();
  requestAnimationFrame(() => setTimeout(() => done([t1 - t0, t2 - t1, performance.now() - t1,
      document.querySelectorAll('#nodes [data-node-id]').length, document.querySelectorAll('#edges path').length]), 0));
});
"""
JS_ZOOM = """
const done = arguments[arguments.length - 1];
const svg = document.getElementById('graph');
const t0 = performance.now();
svg.dispatchEvent(new WheelEvent('wheel', {deltaY: -100, clientX: 300, clientY: 300, cancelable: true}));
requestAnimationFrame(() => setTimeout(() => done(performance.now() - t0), 0));
"""
JS_HOVER = """
const node = document.querySelector('#nodes [data-node-id]');
const t0 = performance.now();
node.dispatchEvent(new MouseEvent('mouseenter', {clientX: 10, clientY: 10}));
node.dispatchEvent(new MouseEvent('mouseleave'));
return performance.now() - t0;
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--edges", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    graph = random_graph(args.nodes, args.edges)
    state = ViewerState()
    held = state.shelf.add("random", graph, {}, "npz")
    held.node_threshold = held.edge_threshold = 1.0  # draw everything
    server = ServerThread(create_app(state))
    driver, profile = headless_chromium()
    try:
        driver.set_script_timeout(120)
        driver.get(server.url)
        time.sleep(1.0)
        loads, draws, paints, hovers, zooms = [], [], [], [], []
        for _ in range(args.repeat):
            load_ms, draw_ms, paint_ms, n_drawn, e_drawn = driver.execute_async_script(JS_RENDER)
            loads.append(load_ms)
            draws.append(draw_ms)
            paints.append(paint_ms)
            hovers.append(driver.execute_script(JS_HOVER))
            zooms.append(driver.execute_async_script(JS_ZOOM))
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
        server.stop()
    print(f"graph: {graph.n_nodes} nodes, {graph.n_edges()} edges; drawn {n_drawn} nodes, {e_drawn} edges")
    print(f"| step (median of {args.repeat}) | ms |\n| --- | --- |")
    print(f"| fetch + prune on the server + parse | {statistics.median(loads):.0f} |")
    print(f"| layout + SVG elements | {statistics.median(draws):.0f} |")
    print(f"| layout + SVG elements + next frame painted | {statistics.median(paints):.0f} |")
    print(f"| zoom step until the next frame is painted | {statistics.median(zooms):.0f} |")
    print(f"| hover (highlight strongest edges) | {statistics.median(hovers):.1f} |")


if __name__ == "__main__":
    main()
