"""Turn an Attribution into a graphs.Graph, and label its features (one pass, once the rows are freed).

A feature's label is its strongest context in the feature index (circuits.features) when the
transcoders have one, else its output view ("-> tok, tok, tok": the tokens its decoders most
promote) for the features the node threshold keeps (computing it for every feature of a long
prompt would cost more than the trace).
"""

from __future__ import annotations

import numpy as np
import torch

from circuits.attribution.rows import Attribution
from circuits.features.output_view import promoted_tokens
from graphs.graph import Graph, NodeKind, make_node_table
from graphs.prune import nodes_by_influence


EDGE_CHUNK_ROWS = 1024  # rows gathered at a time: no second full-size copy of the rows


def graph_edges(attr: Attribution) -> np.ndarray:
    """The graph's edges, float32 [n_targets, n_sources] (graphs.Graph.edges): rows = the chosen
    features then the logits, columns = the chosen features, errors, embeddings. A copy of the
    rows' entries (no arithmetic), gathered in row chunks."""
    layout = attr.layout
    device = attr.logit_rows.device
    source_cols = torch.cat([attr.feature_idx.to(device),
                             torch.arange(layout.n_features, layout.n_sources, device=device)])
    n_f = len(attr.feature_idx)
    edges = np.empty((n_f + attr.logit_rows.shape[0], source_cols.shape[0]), dtype=np.float32)
    for offset, rows in ((0, attr.feature_rows), (n_f, attr.logit_rows)):
        for start in range(0, rows.shape[0], EDGE_CHUNK_ROWS):
            chunk = rows[start:start + EDGE_CHUNK_ROWS][:, source_cols]
            edges[offset + start:offset + start + chunk.shape[0]] = chunk.float().cpu().numpy()
    return edges


def label_features(graph: Graph, model, transcoder, index, node_threshold: float) -> None:
    """Label the graph's feature nodes: from `index` (a FeatureIndex, or None) where it has a context,
    else by output view for the features that pruning at `node_threshold` keeps."""
    features = np.flatnonzero(graph.kind == NodeKind.FEATURE)
    if index is not None:
        labels = {}
        for i in features:
            pair = (int(graph.layer[i]), int(graph.feature[i]))
            if pair not in labels:
                labels[pair] = index.label(*pair)
            if labels[pair]:
                graph.feature_labels[int(i)] = labels[pair]
    kept = np.flatnonzero(nodes_by_influence(graph, node_threshold) & (graph.kind == NodeKind.FEATURE))
    todo = [int(i) for i in kept if int(i) not in graph.feature_labels]
    pairs = sorted({(int(graph.layer[i]), int(graph.feature[i])) for i in todo})
    with torch.no_grad():
        view_of = dict(zip(pairs, promoted_tokens(model, transcoder, pairs)))
    for i in todo:
        graph.feature_labels[i] = f"-> {', '.join(view_of[(int(graph.layer[i]), int(graph.feature[i]))])}"


def token_strings(model, tokens: torch.Tensor) -> list[str]:
    return [model.tokenizer.decode([int(t)]) for t in tokens.tolist()]


def transcoder_identity(transcoder, path: str | None = None) -> dict:
    cfg = transcoder.cfg
    return {"path": path, "kind": cfg.kind, "n_features": cfg.n_features, "n_layers": cfg.n_layers,
            "activation": cfg.activation, "input_hook": cfg.input_hook, "output_hook": cfg.output_hook,
            "hash": transcoder.weight_digest()}


def to_graph(attr: Attribution, model, transcoder, prompt: str, *, model_identity: dict | None = None,
             transcoder_path: str | None = None, settings: dict | None = None) -> Graph:
    """The unpruned graph, unlabelled: chosen features, error nodes (positions >= 1), token
    embeddings, logits (label_features labels it)."""
    rep = attr.rep
    f = rep.features
    idx = attr.feature_idx.cpu()
    L, P = rep.error_layer_pos_d.shape[0], rep.n_pos
    feat_lpf = torch.stack([f.layer.cpu()[idx], f.position.cpu()[idx], f.feature.cpu()[idx]], 1).numpy()
    err_lp = np.array([(l, c) for l in range(L) for c in range(1, P)], dtype=np.int64).reshape(-1, 2)
    table = make_node_table(feat_lpf, f.activation.cpu()[idx].numpy(), err_lp,
                            rep.tokens.cpu().numpy(), np.array(attr.logits.token_ids), L)
    token_strs = token_strings(model, rep.tokens)
    logit_labels = [model.tokenizer.decode([t]) if t >= 0 else lab
                    for t, lab in zip(attr.logits.token_ids, attr.logits.labels)]
    graph = Graph(
        edges=graph_edges(attr), **table,
        logit_probabilities=attr.logits.probabilities.cpu().numpy(),
        logit_weights=attr.logits.weights.cpu().numpy(),
        logit_labels=logit_labels, prompt=prompt, token_ids=rep.tokens.tolist(), token_strs=token_strs,
        n_layers=L, model=model_identity or {"d_vocab": model.cfg.d_vocab},
        transcoders=transcoder_identity(transcoder, transcoder_path),
        settings={**(settings or {}), "threads": attr.threads},
        timing_seconds={k: round(v, 4) for k, v in attr.timing_seconds.items()})
    return graph
