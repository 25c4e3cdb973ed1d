"""A readable summary of a pruned graph, as plain data (the CLI decides how to print it)."""

from __future__ import annotations

from typing import Any

import numpy as np

from graphs.graph import Graph, NodeKind
from graphs.paths import strongest_path
from graphs.prune import PrunedGraph
from graphs.scores import compute_scores


def summarize(graph: Graph, pruned: PrunedGraph, top_per_position: int = 3, top_features: int = 8) -> dict[str, Any]:
    """{prompt, tokens, model, transcoders, thresholds, counts, scores, logits, positions, features,
    path, timing_seconds}. `logits`: [{node_id, label, token_id, probability, weight}] in graph order.
    `positions`: one entry per prompt position, {position, token, features}, features being the
    `top_per_position` most influential kept feature nodes there, most influential first, each
    {node_id, layer, feature, activation, influence, label}. `features`: the `top_features` kept
    transcoder features with the most influence summed over the positions they fire at, each
    {layer, feature, positions, influence, label}. `path`: the strongest kept path from a prompt
    token through features to the most likely logit (graphs.paths), {target, weight, nodes}, each
    node {node_id, kind, layer, position, token, influence, label}; None when there is none."""
    logits = []
    for j, i in enumerate(range(graph.logit_slice.start, graph.logit_slice.stop)):
        logits.append({
            "node_id": graph.node_id(i),
            "label": graph.logit_labels[j],
            "token_id": int(graph.token_id[i]),
            "probability": float(graph.logit_probabilities[j]),
            "weight": float(graph.logit_weights[j]),
        })
    kept_features = np.flatnonzero(pruned.node_mask & (graph.kind == NodeKind.FEATURE))
    positions = []
    for pos, token in enumerate(graph.token_strs):
        here = kept_features[graph.position[kept_features] == pos]
        ranked = here[np.argsort(-pruned.node_influence[here], kind="stable")][:top_per_position]
        positions.append({"position": pos, "token": token,
                          "features": [_feature_entry(graph, pruned, int(i)) for i in ranked]})
    return {
        "prompt": graph.prompt,
        "tokens": list(graph.token_strs),
        "model": graph.model,
        "transcoders": graph.transcoders,
        "thresholds": {"node_threshold": pruned.node_threshold, "edge_threshold": pruned.edge_threshold},
        "counts": pruned.counts(graph),
        "scores": compute_scores(graph, pruned),
        "logits": logits,
        "positions": positions,
        "features": feature_groups(graph, pruned, top_features),
        "path": top_logit_path(graph, pruned),
        "timing_seconds": graph.timing_seconds,
        "warnings": graph_warnings(graph),
    }


def feature_groups(graph: Graph, pruned: PrunedGraph, top: int) -> list[dict[str, Any]]:
    """Kept feature nodes grouped by transcoder feature (layer, feature): one feature firing at
    several positions is one line for a reader, with its influence summed over them."""
    kept = np.flatnonzero(pruned.node_mask & (graph.kind == NodeKind.FEATURE))
    groups: dict[tuple[int, int], list[int]] = {}
    for i in kept.tolist():
        groups.setdefault((int(graph.layer[i]), int(graph.feature[i])), []).append(i)
    ranked = sorted(groups.items(), key=lambda kv: (-float(pruned.node_influence[kv[1]].sum()), kv[0]))[:top]
    return [{"layer": layer, "feature": feat, "positions": sorted(int(graph.position[i]) for i in nodes),
             "influence": float(pruned.node_influence[nodes].sum()),
             "label": next((graph.feature_labels[i] for i in nodes if graph.feature_labels.get(i)), "")}
            for (layer, feat), nodes in ranked]


def top_logit_path(graph: Graph, pruned: PrunedGraph) -> dict[str, Any] | None:
    """The strongest kept path from any prompt token through features to the most likely logit."""
    if graph.n_logits == 0 or graph.n_edges() == 0:
        return None
    j = int(np.argmax(graph.logit_probabilities))
    target = graph.logit_slice.start + j
    sources = np.arange(graph.embedding_slice.start, graph.embedding_slice.stop)
    path = strongest_path(graph, pruned, sources, target)
    if not path:
        return None
    nodes = []
    for i in path.nodes:
        kind = NodeKind(int(graph.kind[i]))
        nodes.append({"node_id": graph.node_id(i), "kind": kind.name.lower(), "layer": int(graph.layer[i]),
                      "position": int(graph.position[i]), "feature": int(graph.feature[i]),
                      "token": graph.token_strs[int(graph.position[i])] if kind is not NodeKind.LOGIT else "",
                      "influence": float(pruned.node_influence[i]),
                      "label": (graph.logit_labels[j] if kind is NodeKind.LOGIT else graph.feature_labels.get(i, ""))})
    return {"target": graph.logit_labels[j], "weight": path.weight, "nodes": nodes}


def path_text(path: dict[str, Any]) -> str:
    """'The'@1 -> 2:1:169 L2 "label" -> ... -> ' Paris' (one line per summary path)."""
    steps = []
    for n in path["nodes"]:
        if n["kind"] == "embedding":
            steps.append(f"{n['token']!r}@{n['position']}")
        elif n["kind"] == "logit":
            steps.append(f"logit {n['label']!r}")
        else:
            label = f" {n['label']!r}" if n["label"] else ""
            steps.append(f"{n['layer']}:{n['position']}:{n['feature']}{label}")
    return " -> ".join(steps)


def graph_warnings(graph: Graph) -> list[str]:
    """What makes a graph's numbers meaningless, said in words (empty list when nothing does)."""
    if graph.n_edges() == 0:
        return ["the graph is empty: it has no edges, nothing connects the prompt to the logits, "
                "so it has no scores"]
    return []


def _feature_entry(graph: Graph, pruned: PrunedGraph, i: int) -> dict[str, Any]:
    return {
        "node_id": graph.node_id(i),
        "layer": int(graph.layer[i]),
        "feature": int(graph.feature[i]),
        "activation": float(graph.activation[i]),
        "influence": float(pruned.node_influence[i]),
        "label": graph.feature_labels.get(i, ""),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """Plain-text rendering of `summarize`'s output (for logs and simple CLIs)."""
    c, s = summary["counts"], summary["scores"]
    lines = [f"prompt: {summary['prompt']!r}", "top logits:"]
    lines += [f"  {lg['label']!r:>20}  p={lg['probability']:.3f}" for lg in summary["logits"]]
    lines.append(f"nodes {c['nodes_before']} -> {c['nodes_after']}, "
                 f"edges {c['edges_before']} -> {c['edges_after']} "
                 f"(features {c['features_before']} -> {c['features_after']})")
    lines += [f"warning: {w}" for w in summary.get("warnings", [])]
    lines.append(f"replacement {_fmt(s['replacement'])} (pruned {_fmt(s['replacement_pruned'])}), "
                 f"completeness {_fmt(s['completeness'])} (pruned {_fmt(s['completeness_pruned'])})")
    lines.append("most influential features per position:")
    for entry in summary["positions"]:
        feats = ", ".join(f"{f['node_id']} {f['label']!r}" if f["label"] else f["node_id"]
                          for f in entry["features"]) or "-"
        lines.append(f"  {entry['position']:>3} {entry['token']!r:>12}: {feats}")
    if summary.get("path"):
        lines.append(f"strongest path to {summary['path']['target']!r}: {path_text(summary['path'])}")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
