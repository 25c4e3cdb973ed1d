"""Turn an Attribution into a graphs.Graph, with readable feature descriptions."""

from __future__ import annotations


import numpy as np
import torch

from circuits.attribution.engine import Attribution, graph_edges
from circuits.feature_index import feature_logits
from graphs import Graph, make_node_table
from graphs.graph import NodeKind


def promoted_tokens(model, transcoder, layer_feat_pairs: list[tuple[int, int]], top: int = 3) -> list[list[str]]:
    """For each feature, the `top` tokens its decoders most promote (feature_index.feature_logits):
    the feature's "output" view, its label when the feature index has none."""
    out = []
    W_U_d_vocab = model.W_U.detach().float() if layer_feat_pairs else None  # cast once, not per feature
    for layer, feat in layer_feat_pairs:
        ids = feature_logits(model, transcoder, layer, feat, W_U_d_vocab).topk(top).indices.tolist()
        out.append([model.tokenizer.decode([i]).strip() or repr(model.tokenizer.decode([i])) for i in ids])
    return out


def add_output_view_labels(graph: Graph, model, transcoder, nodes) -> None:
    """Label the feature nodes in `nodes` that have no label yet by their output view."""
    todo = [int(i) for i in nodes if int(i) not in graph.feature_labels and graph.kind[int(i)] == NodeKind.FEATURE]
    pairs = sorted({(int(graph.layer[i]), int(graph.feature[i])) for i in todo})
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
             transcoder_path: str | None = None, settings: dict | None = None,
             feature_labels: dict[tuple[int, int], str] | None = None, output_views: bool = True) -> Graph:
    """The unpruned graph: chosen features, error nodes (positions >= 1), token embeddings, logits.

    `feature_labels` maps (layer, feature) to a description (e.g. from a feature index); features
    without one are labelled by their output view (unless `output_views` is False: then call
    add_output_view_labels for the nodes that need one, e.g. the pruned graph's).
    """
    rep = attr.rep
    f = rep.features
    idx = attr.feature_idx.cpu()
    L, P = rep.error_layer_pos_d.shape[0], rep.n_pos
    feat_lpf = torch.stack([f.layer.cpu()[idx], f.position.cpu()[idx], f.feature.cpu()[idx]], 1).numpy()
    err_lp = np.array([(l, c) for l in range(L) for c in range(1, P)], dtype=np.int64).reshape(-1, 2)
    table = make_node_table(feat_lpf, f.activation.cpu()[idx].numpy(), err_lp,
                            rep.tokens.cpu().numpy(), np.array(attr.logits.token_ids), L)
    token_strs = token_strings(model, rep.tokens)
    labels = {}
    for node, (l, c, i) in enumerate(feat_lpf):
        given = (feature_labels or {}).get((int(l), int(i)))
        if given:
            labels[node] = given
    logit_labels = [model.tokenizer.decode([t]) if t >= 0 else lab
                    for t, lab in zip(attr.logits.token_ids, attr.logits.labels)]
    graph = Graph(
        edges=graph_edges(attr), **table,
        logit_probabilities=attr.logits.probabilities.cpu().numpy(),
        logit_weights=attr.logits.weights.cpu().numpy(),
        logit_labels=logit_labels, prompt=prompt, token_ids=rep.tokens.tolist(), token_strs=token_strs,
        n_layers=L, model=model_identity or {"d_vocab": model.cfg.d_vocab},
        transcoders=transcoder_identity(transcoder, transcoder_path),
        settings={**(settings or {}), "threads": attr.threads, "memory_plan": attr.memory_plan},
        timing_seconds={k: round(v, 4) for k, v in attr.timing_seconds.items()}, feature_labels=labels)
    if output_views:
        add_output_view_labels(graph, model, transcoder, range(len(feat_lpf)))
    return graph
