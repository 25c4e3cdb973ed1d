"""trace(): prompt in, pruned and scored attribution graph out - the engine's main job.

    from circuits.trace import trace
    result = trace("calc: 36+59=")            # built-in `world` model and its default CLT
    result.graph, result.pruned, result.summary
    ReplacementModel.trace(prompt) is the same for a model loaded once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from circuits.attribution.engine import CustomTarget, attribute
from circuits.attribution.to_graph import add_output_view_labels, to_graph
from circuits.errors import CircuitsError
from circuits.prompts import token_id, tokenize_prompt
from circuits.replacement_model import ReplacementModel
from circuits.trace_config import TraceConfig
from graphs import Graph, PrunedGraph, prune_graph, summarize


@dataclass
class TraceResult:
    """A traced prompt: the full graph, its pruned view and the summary `circuits trace` prints."""

    graph: Graph
    pruned: PrunedGraph
    summary: dict

    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> TraceResult:
        """The same graph pruned at other thresholds (no recomputation)."""
        pruned = prune_graph(self.graph, node_threshold, edge_threshold)
        return TraceResult(self.graph, pruned, summarize(self.graph, pruned))

    def write_json(self, path: str | Path) -> Path:
        """The pruned graph as viewer JSON (what `circuits trace -o` writes; `circuits view` opens it)."""
        from graphs import write_viewer_json

        write_viewer_json(self.graph, self.pruned, path)
        return Path(path)

    def save(self, path: str | Path) -> Path:
        """The full graph as .npz (what `circuits trace --full` writes; `circuits prune` re-prunes it)."""
        from graphs import save_graph

        save_graph(self.graph, path)
        return Path(path)


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
            if c == t:
                raise CircuitsError(f"--target {text!r} and --contrast {contrast!r} are the same token: their "
                                    "logit difference is zero by definition; give two different tokens")
            out.append(CustomTarget(f"{text.strip()} - {contrast.strip()}", W_U[:, t] - W_U[:, c]))
        else:
            out.append(CustomTarget(f"{text.strip()} (target)", W_U[:, t] - W_U.mean(1)))
    return out


def trace_prompt(rm: ReplacementModel, prompt: str, config: TraceConfig | None = None,
                 progress: bool = False) -> TraceResult:
    """Attribute, build the graph, prune and summarise one prompt (feature labels from rm.index)."""
    config = config or TraceConfig()
    model, transcoder = rm.model, rm.transcoder
    t0 = time.perf_counter()
    graph = _attributed_graph(rm, prompt, config, progress)  # the attribution rows are freed here
    t1 = time.perf_counter()
    pruned = prune_graph(graph, config.node_threshold, config.edge_threshold)
    graph.timing_seconds["prune"] = round(time.perf_counter() - t1, 4)
    if config.qk:
        _attach_attention(rm, graph, pruned, config)
    with torch.no_grad():
        add_output_view_labels(graph, model, transcoder, np.flatnonzero(pruned.node_mask))
    graph.timing_seconds["total"] = round(time.perf_counter() - t0, 4)
    return TraceResult(graph, pruned, summarize(graph, pruned))


@torch.no_grad()
def _attributed_graph(rm: ReplacementModel, prompt: str, config: TraceConfig, progress: bool) -> Graph:
    """The unpruned graph with index labels. The attribution rows (every active feature as a
    source) live only inside this call, so pruning does not hold them beside the graph."""
    model, transcoder = rm.model, rm.transcoder
    tokens = tokenize_prompt(model, prompt)
    targets = custom_targets(model, config.targets, config.contrast)
    attr = attribute(model, transcoder, tokens, max_n_logits=config.max_n_logits,
                     desired_logit_prob=config.desired_logit_prob, custom_targets=targets,
                     max_feature_nodes=config.max_feature_nodes, batch_size=config.batch_size,
                     progress=progress, memory_gb=config.memory_gb)
    f = attr.rep.features
    idx = attr.feature_idx.cpu()
    pairs = sorted({(int(l), int(i)) for l, i in zip(f.layer.cpu()[idx], f.feature.cpu()[idx])})
    index = rm.index
    labels = {p: index.label(*p) for p in pairs if index.label(*p)} if index is not None else {}
    return to_graph(attr, model, transcoder, prompt, model_identity=rm.identity,
                    transcoder_path=str(rm.transcoder_dir) if rm.transcoder_dir else None,
                    settings=config.model_dump(), feature_labels=labels, output_views=False)


def _attach_attention(rm: ReplacementModel, graph: Graph, pruned: PrunedGraph, config: TraceConfig) -> None:
    """Head loadings of the kept edges and QK attributions of the busiest heads (circuits.attention)."""
    from circuits.attention.attach import attach_attention

    t0 = time.perf_counter()
    directions = [t.direction_d for t in custom_targets(rm.model, config.targets, config.contrast)]
    attach_attention(graph, pruned, rm.model, rm.transcoder, config.qk_heads, directions, rm.index)
    graph.timing_seconds["attention"] = round(time.perf_counter() - t0, 4)


def trace(prompt: str, model: str = "world", transcoders: str | Path | None = None,
          config: TraceConfig | None = None, device: str = "cpu", progress: bool = True) -> TraceResult:
    """Load `model` and its transcoders (ReplacementModel.load) and trace one prompt."""
    return trace_prompt(ReplacementModel.load(model, transcoders, device, progress), prompt, config, progress)
