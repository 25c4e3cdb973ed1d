"""How fast the viewer page draws a large graph in headless Chromium.

    python benchmarks/viewer_render.py [--nodes 1000] [--edges 10000] [--repeat 5]
    python benchmarks/viewer_render.py --positions 2000 --kept-positions 60 --node-threshold 0.8  # a long prompt

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


def random_graph(n_nodes: int, n_edges: int, seed: int = 0, n_pos: int = N_POS, n_kept_pos: int | None = None) -> Graph:
    """Features over N_LAYERS layers and `n_kept_pos` of the `n_pos` positions (all by default;
    fewer for a long prompt whose graph lives at a few positions), edges up in layer."""
    rng = np.random.default_rng(seed)
    n_logits, n_err = 5, N_LAYERS * (n_pos - 1)
    n_feat = max(n_nodes - n_logits - min(n_pos, n_kept_pos or n_pos) - N_LAYERS * (n_kept_pos or n_pos), 1)
    layer = rng.integers(0, N_LAYERS, n_feat)
    kept = np.arange(1, n_pos) if n_kept_pos is None else np.sort(rng.choice(np.arange(1, n_pos), n_kept_pos, replace=False))
    pos = rng.choice(kept, n_feat)
    order = np.lexsort((np.arange(n_feat), pos, layer))
    layer, pos = layer[order], pos[order]
    lpf = np.stack([layer, pos, np.arange(n_feat)], 1)
    errors = np.array([(l, p) for l in range(N_LAYERS) for p in range(1, n_pos)])
    table = make_node_table(lpf, rng.uniform(0.1, 3, n_feat), errors, list(range(n_pos)),
                            list(range(100, 100 + n_logits)), N_LAYERS)
    # edges [features + logits, features + errors + embeddings]
    n_src = n_feat + n_err + n_pos
    edges = np.zeros((n_feat + n_logits, n_src), dtype=np.float32)
    t_layer = np.concatenate([layer, np.full(n_logits, N_LAYERS)])
    t_pos = np.concatenate([pos, np.full(n_logits, n_pos - 1)])
    placed = 0
    while placed < n_edges:
        t = rng.integers(0, n_feat + n_logits, 4096)
        s = rng.integers(0, n_feat, 4096)  # feature -> feature or logit, up in layer, not later in position
        ok = (layer[s] < t_layer[t]) & (pos[s] <= t_pos[t]) & (edges[t, s] == 0)
        edges[t[ok], s[ok]] = rng.normal(size=int(ok.sum()))
        placed = int(np.count_nonzero(edges))
    # every feature reads its token and its error, and writes to a logit: all are drawn
    feats = np.arange(n_feat)
    edges[feats, n_feat + n_err + pos] = rng.uniform(0.5, 1.5, n_feat)
    above = feats[layer >= 1]
    edges[above, n_feat + (layer[above] - 1) * (n_pos - 1) + (pos[above] - 1)] = rng.uniform(0.1, 0.5, len(above))
    edges[n_feat + rng.integers(0, n_logits, n_feat), feats] = rng.normal(size=n_feat)
    probs = rng.dirichlet(np.ones(n_logits)) * 0.9
    words = ["the", " module", " returns", " a", " new", " object", ",", " and", " raises", " errors", ".", "\n"]
    token_strs = ["<bos>"] + [words[i % len(words)] for i in range(n_pos - 1)]
    return Graph(edges=edges, **table, logit_probabilities=probs,
                 logit_labels=[str(i) for i in range(n_logits)], prompt="".join(token_strs[1:]),
                 token_ids=list(range(n_pos)), token_strs=token_strs, n_layers=N_LAYERS)


JS_RENDER = """
const done = arguments[arguments.length - 1];
const v = window.circuitsViewer;
const t0 = performance.now();
fetch(`/api/graphs/${v.state.gid}?node_threshold=${arguments[0]}&edge_threshold=1`).then((r) => r.json()).then(() => {
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
    parser.add_argument("--positions", type=int, default=N_POS, help="prompt length (e.g. 2000)")
    parser.add_argument("--kept-positions", type=int, default=None,
                        help="positions carrying features (default: all); the rest fold on the axis")
    parser.add_argument("--node-threshold", type=float, default=1.0, help="1: draw every node")
    args = parser.parse_args()
    graph = random_graph(args.nodes, args.edges, n_pos=args.positions, n_kept_pos=args.kept_positions)
    state = ViewerState()
    held = state.shelf.add("random", graph, {}, "npz")
    held.node_threshold, held.edge_threshold = args.node_threshold, 1.0
    server = ServerThread(create_app(state))
    driver, profile = headless_chromium()
    try:
        driver.set_script_timeout(120)
        driver.get(server.url)
        time.sleep(1.0)
        loads, draws, paints, hovers, zooms = [], [], [], [], []
        for _ in range(args.repeat):
            load_ms, draw_ms, paint_ms, n_drawn, e_drawn = driver.execute_async_script(JS_RENDER, args.node_threshold)
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
    print(f"| first paint: fetch + prune + parse + layout + SVG + painted | "
          f"{statistics.median([a + b for a, b in zip(loads, paints)]):.0f} |")
    print(f"| zoom step until the next frame is painted | {statistics.median(zooms):.0f} |")
    print(f"| hover (highlight strongest edges) | {statistics.median(hovers):.1f} |")


if __name__ == "__main__":
    main()
