"""trace(): prompt in, pruned and scored attribution graph out - the engine's main job.

    from circuits.trace import trace
    result = trace("calc: 36+59=")            # built-in `world` model and its default CLT
    result.graph, result.pruned, result.summary
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, Field

from circuits.attribution.engine import CustomTarget, attribute
from circuits.attribution.to_graph import to_graph
from circuits.errors import CircuitsError
from circuits.prompts import token_id, tokenize_prompt
from graphs import Graph, PrunedGraph, prune_graph, summarize


class TraceConfig(BaseModel):
    """Settings of one trace (saved in the graph, so a result can be reproduced)."""

    node_threshold: float = Field(0.8, gt=0, le=1, description="keep feature/error nodes holding this share of influence")
    edge_threshold: float = Field(0.98, gt=0, le=1, description="keep edges holding this share of edge score")
    max_feature_nodes: int | None = Field(None, gt=0, description="attribute at most this many features (by influence)")
    max_n_logits: int = Field(10, gt=0, description="at most this many logit targets")
    desired_logit_prob: float = Field(0.95, gt=0, le=1, description="logit targets until this cumulative probability")
    batch_size: int = Field(64, gt=0, description="target rows per backward sweep")
    targets: list[str] = Field(default_factory=list, description="extra target tokens")
    contrast: str | None = Field(None, description="with one target: trace logit(target) - logit(contrast)")


@dataclass
class TraceResult:
    graph: Graph
    pruned: PrunedGraph
    summary: dict


def custom_targets(model, targets: list[str], contrast: str | None) -> list[CustomTarget]:
    """Directions after the final norm: a demeaned unembedding column per target token, or with a
    contrast token the difference of the two columns (a logit difference)."""
    if contrast is not None and len(targets) != 1:
        raise CircuitsError("--contrast needs exactly one --target")
    W_U = model.W_U.detach().float()
    out = []
    for text in targets:
        t = token_id(model, text)
        if contrast is not None:
            c = token_id(model, contrast)
            out.append(CustomTarget(f"{text.strip()} - {contrast.strip()}", W_U[:, t] - W_U[:, c]))
        else:
            out.append(CustomTarget(f"{text.strip()} (target)", W_U[:, t] - W_U.mean(1)))
    return out


def index_labels(transcoder_dir: Path | None, pairs: list[tuple[int, int]]) -> dict[tuple[int, int], str]:
    """Labels from the feature index beside the transcoders, when there is one."""
    if transcoder_dir is None:
        return {}
    from circuits.feature_index import load_feature_index

    index = load_feature_index(transcoder_dir)
    if index is None:
        return {}
    return {p: index.label(*p) for p in pairs if index.label(*p)}


def trace_tokens(model, transcoder, prompt: str, config: TraceConfig | None = None, *,
                 model_identity: dict | None = None, transcoder_dir: Path | None = None,
                 progress: bool = False) -> TraceResult:
    """Attribute, build the graph, prune and summarise one prompt."""
    config = config or TraceConfig()
    tokens = tokenize_prompt(model, prompt)
    targets = custom_targets(model, config.targets, config.contrast)
    t0 = time.perf_counter()
    attr = attribute(model, transcoder, tokens, max_n_logits=config.max_n_logits,
                     desired_logit_prob=config.desired_logit_prob, custom_targets=targets,
                     max_feature_nodes=config.max_feature_nodes, batch_size=config.batch_size,
                     progress=progress)
    f = attr.rep.features
    idx = attr.feature_idx.cpu()
    pairs = sorted({(int(l), int(i)) for l, i in zip(f.layer.cpu()[idx], f.feature.cpu()[idx])})
    labels = index_labels(transcoder_dir, pairs)
    graph = to_graph(attr, model, transcoder, prompt, model_identity=model_identity,
                     transcoder_path=str(transcoder_dir) if transcoder_dir else None,
                     settings=config.model_dump(), feature_labels=labels)
    t1 = time.perf_counter()
    pruned = prune_graph(graph, config.node_threshold, config.edge_threshold)
    graph.timing_seconds["prune"] = round(time.perf_counter() - t1, 4)
    graph.timing_seconds["total"] = round(time.perf_counter() - t0, 4)
    return TraceResult(graph, pruned, summarize(graph, pruned))


def load_model_and_transcoders(model_spec: str = "world", transcoders: str | Path | None = None,
                               device: str = "cpu", progress: bool = True):
    """(LoadedModel, Transcoder, transcoder_dir): the default CLT for built-in models if none given."""
    from circuits.models.registry import load_model, model_summary

    loaded = load_model(model_spec, device=device, progress=progress)
    if transcoders is None:
        from circuits.default_transcoders import default_transcoders

        tc, path = default_transcoders(loaded, progress=progress)
    else:
        from circuits.transcoder_fit import load_fitting_transcoder

        path = Path(transcoders)
        tc = load_fitting_transcoder(loaded.model, path, device=device)
    tc.eval()
    for p in tc.parameters():
        p.requires_grad_(False)
    return loaded, tc, Path(path), model_summary(loaded)


def trace(prompt: str, model: str = "world", transcoders: str | Path | None = None,
          config: TraceConfig | None = None, device: str = "cpu", progress: bool = True) -> TraceResult:
    loaded, tc, path, identity = load_model_and_transcoders(model, transcoders, device, progress)
    with torch.no_grad():
        return trace_tokens(loaded.model, tc, prompt, config, model_identity=identity,
                            transcoder_dir=path, progress=progress)
