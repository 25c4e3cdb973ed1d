"""Time pruning and scoring of a saved full graph, with the process's peak RSS.

    PYTHONPATH=. nice -n 10 python benchmarks/prune_time.py GRAPH.npz

Prints the node and edge counts kept, prune_graph and compute_scores seconds, RSS after loading
and the peak (ru_maxrss), and the four scores (see benchmarks/README.md, "Graph memory").
"""

from __future__ import annotations

import resource
import sys
import time

from graphs import compute_scores, load_graph, prune_graph


def main(path: str) -> None:
    graph = load_graph(path)
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    pruned = prune_graph(graph)
    t_prune = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = compute_scores(graph, pruned)
    t_scores = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"nodes {graph.n_nodes} kept {pruned.n_nodes_after} edges {pruned.n_edges_after} "
          f"prune {t_prune:.2f}s scores {t_scores:.2f}s rss_loaded {rss_loaded / 1024:.0f}MiB "
          f"peak {peak / 1024:.0f}MiB {scores}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/prune_time.py GRAPH.npz")
    main(sys.argv[1])
