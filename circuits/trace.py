"""The one orchestrator of a trace: attribute -> prune -> summarize.

    rm = ReplacementModel.load("world")
    result = trace_prompt(rm, "calc: 36+59=", TraceConfig())   # what rm.trace(prompt) does
    result.graph, result.pruned, result.summary

Each step is one call: circuits.attribution.engine.attribute (the labelled full graph),
graphs.prune.prune_graph, (with config.qk) circuits.attention.attach, graphs.summary.summarize. A trace option is a TraceConfig field
(circuits.attribution.config) that the engine reads; nothing here unpacks it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from circuits.attribution.config import TraceConfig
from circuits.attribution.engine import attribute, attribute_keeping_replacement
from graphs.graph import Graph
from graphs.io import save_graph
from graphs.neuronpedia import write_viewer_json
from graphs.prune import PrunedGraph, prune_graph
from graphs.summary import summarize
from graphs.thresholds import DEFAULT_EDGE_THRESHOLD, DEFAULT_NODE_THRESHOLD

if TYPE_CHECKING:
    from circuits.replacement.model import ReplacementModel

__all__ = ["TraceResult", "trace_prompt", "trace_prompts"]


@dataclass
class TraceResult:
    """A traced prompt: the full graph, its pruned view and the summary `circuits trace` prints."""

    graph: Graph
    pruned: PrunedGraph
    summary: dict

    def prune(self, node_threshold: float = DEFAULT_NODE_THRESHOLD,
              edge_threshold: float = DEFAULT_EDGE_THRESHOLD) -> TraceResult:
        """The same graph pruned at other thresholds (no recomputation)."""
        pruned = prune_graph(self.graph, node_threshold, edge_threshold)
        return TraceResult(self.graph, pruned, summarize(self.graph, pruned))

    def write_json(self, path: str | Path) -> Path:
        """The pruned graph as viewer JSON (what `circuits trace -o` writes; `circuits view` opens it)."""
        write_viewer_json(self.graph, self.pruned, path)
        return Path(path)

    def save(self, path: str | Path) -> Path:
        """The full graph as .npz (what `circuits trace --full` writes; `circuits prune` re-prunes it)."""
        save_graph(self.graph, path)
        return Path(path)


def trace_prompt(rm: ReplacementModel, prompt: str, config: TraceConfig | None = None,
                 progress: bool = False) -> TraceResult:
    """Attribute (the labelled full graph), prune at the config's thresholds, summarise."""
    config = config or TraceConfig()
    t0 = time.perf_counter()
    if config.qk:  # the attention step explains the same local replacement model: keep it
        graph, rep, layout = attribute_keeping_replacement(rm, prompt, config, progress=progress)
    else:
        graph, rep, layout = attribute(rm, prompt, config, progress=progress), None, None
    return _prune_and_summarize(rm, graph, config, t0, rep, layout)


def trace_prompts(rm: ReplacementModel, prompts: list[tuple[str, TraceConfig]], batch_prompts: int = 1):
    """Yield the TraceResult of each (prompt, config), in order. batch_prompts > 1: the rows of that
    many prompts share backward sweeps (circuits.attribution.batched; the graphs equal
    trace_prompt's to float rounding, 1e-6 relative); 1: trace_prompt per prompt. In a shared group
    a graph's timing_seconds["shared"] is its share of the group's forwards and sweeps (the group's
    seconds / its prompts), and "total" that share plus its own pruning. With `qk`, the attention
    step rebuilds each prompt's local replacement (the shared groups do not keep them)."""
    if batch_prompts <= 1:
        for prompt, config in prompts:
            yield trace_prompt(rm, prompt, config)
        return
    from circuits.attribution.batched import attribute_many

    for graph, (_, config) in zip(attribute_many(rm, prompts, batch_prompts), prompts):
        yield _prune_and_summarize(rm, graph, config, time.perf_counter() - graph.timing_seconds["shared"])


def _prune_and_summarize(rm: ReplacementModel, graph: Graph, config: TraceConfig, t0: float,
                         rep=None, layout=None) -> TraceResult:
    t1 = time.perf_counter()
    pruned = prune_graph(graph, config.node_threshold, config.edge_threshold)
    graph.timing_seconds["prune"] = round(time.perf_counter() - t1, 4)
    if config.qk:
        _attach_attention(rm, graph, pruned, config, rep, layout)
        del rep, layout
    graph.timing_seconds["total"] = round(time.perf_counter() - t0, 4)
    return TraceResult(graph, pruned, summarize(graph, pruned))


def _attach_attention(rm: ReplacementModel, graph: Graph, pruned: PrunedGraph, config: TraceConfig,
                      rep=None, layout=None) -> None:
    """Head loadings of the kept edges and QK attributions of the busiest heads (circuits.attention),
    between prune and summarize."""
    from circuits.attention.attach import attach_attention
    from circuits.attribution.targets import custom_targets

    t0 = time.perf_counter()
    customs = custom_targets(rm.model, config.targets, config.contrast)
    n_custom = int((graph.token_id[graph.logit_slice] < 0).sum())
    if config.answer is not None and n_custom > len(customs):  # the answer was added as a direction
        customs += custom_targets(rm.model, [config.answer], None)
    directions = [t.direction_d for t in customs]
    attach_attention(graph, pruned, rm.model, rm.transcoder, config.qk_heads, directions, rm.index, rep, layout)
    graph.timing_seconds["attention"] = round(time.perf_counter() - t0, 4)
