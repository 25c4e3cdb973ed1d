"""attribute(): the attribution graph of one prompt (METHOD.md section 3).

1. Freeze the local replacement model of the prompt (circuits.replacement).
2. Targets: the top logits (and custom directions), then the active features - all of them, or
   the `max_feature_nodes` with the largest estimated influence on the logits, chosen in rounds
   from the rows computed so far (as the reference implementation does; a round adds a quarter of
   the rows known, at least one batch).
3. Rows come from batched frozen backward sweeps (circuits.attribution.rows), batches sorted by
   (layer, position) so each sweep only covers its causal cone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from circuits.attribution.frozen_backward import FrozenBlocks
from circuits.attribution.influence import feature_influence, logit_flow, next_round
from circuits.attribution.memory import (TraceShape, check_forward_fits, forward_bytes, plan_decoders, plan_rows,
                                         resident_bytes)
from circuits.attribution.row_store import RowStore
from circuits.attribution.rows import SourceLayout, compute_rows
from circuits.attribution.targets import (LogitTargets, TargetSeeds, add_custom_target, feature_seeds,
                                          logit_seeds, select_logits)
from circuits.replacement import LocalReplacement, build_local_replacement
from transcoders.threads import free_core_threads


@dataclass
class CustomTarget:
    """A direction read after the final norm at the last position, e.g. a logit difference."""

    label: str
    direction_d: torch.Tensor
    weight: float | None = None


@dataclass
class Attribution:
    """The raw result: rows for the logit targets and the chosen features, over the graph's
    sources (the chosen features, errors, tokens: `source_cols` of the layout's columns)."""

    rep: LocalReplacement
    logits: LogitTargets
    feature_idx: torch.Tensor  # [n_chosen] indices into rep.features, in node order
    logit_rows: torch.Tensor  # [n_logits, n_graph_sources]
    feature_rows: torch.Tensor  # [n_chosen, n_graph_sources]
    layout: SourceLayout
    source_cols: torch.Tensor  # [n_graph_sources] the layout's columns the rows keep
    timing_seconds: dict = field(default_factory=dict)
    memory_plan: dict = field(default_factory=dict)  # the memory model's cap and predicted peak
    threads: list[int] = field(default_factory=list)  # torch threads used, in order of change


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


GRADIENT_BUDGET_BYTES = 1 << 30  # per batch: the stored gradients [P, B, L, d] stay below this


def bounded_batch_size(batch_size: int, n_pos: int, n_layers: int, d_model: int) -> int:
    """Shrink the batch so one sweep's stored gradients fit GRADIENT_BUDGET_BYTES (long prompts)."""
    per_row = 4 * n_pos * (n_layers + 1) * d_model
    return max(1, min(batch_size, GRADIENT_BUDGET_BYTES // per_row))


def _rows_in_batches(rep, blocks, transcoder, layout, seeds: TargetSeeds, batch_size: int,
                     progress, out: torch.Tensor | None = None) -> torch.Tensor:
    """Rows [len(seeds), n_sources] in seed order, written into `out` when given (a view of a
    larger preallocated block: no temporary copy)."""
    batch_size = bounded_batch_size(batch_size, rep.n_pos, blocks.n_layers, rep.embed_pos_d.shape[1])
    if out is None:
        out = torch.empty(len(seeds), layout.n_sources, device=seeds.vec_d.device)
    order = torch.argsort(seeds.layer * (rep.n_pos + 1) + seeds.position)  # group causal cones
    for sl in _batches(len(seeds), batch_size):
        idx = order[sl]
        out[idx] = compute_rows(rep, blocks, transcoder, layout, seeds.select(idx))
        progress(sl.stop - sl.start)
    return out


INFLUENCE_UPDATE_DIVISOR = 4


@torch.no_grad()
def attribute(model, transcoder, tokens_pos: torch.Tensor, *, max_n_logits: int = 10,
              desired_logit_prob: float = 0.95, custom_targets: list[CustomTarget] | None = None,
              max_feature_nodes: int | None = None, batch_size: int = 64,
              progress: bool = False, threads: int | None = None,
              memory_gb: float | None = None) -> Attribution:
    """Compute adjacency rows for the logit targets and the active features of one prompt.

    max_feature_nodes None: every active feature; with a `memory_gb` budget it means the default
    cap instead (circuits.attribution.memory), and an explicit cap that does not fit is refused.

    Runs on the CPU cores free now (at most torch's thread count; `threads` fixes it), re-checked
    between batches: see transcoders.threads for why a busy core must not get a thread."""
    with free_core_threads(threads) as adaptive:
        attr = _attribute(model, transcoder, tokens_pos, max_n_logits, desired_logit_prob, custom_targets,
                          max_feature_nodes, batch_size, progress, adaptive.recheck, memory_gb)
        attr.threads = adaptive.history
    return attr


def _attribute(model, transcoder, tokens_pos, max_n_logits, desired_logit_prob, custom_targets,
               max_feature_nodes, batch_size, progress, recheck_threads, memory_gb) -> Attribution:
    timing = {}
    t0 = time.perf_counter()
    baseline = resident_bytes() if memory_gb is not None else 0
    check_forward_fits(_forward_bytes(model, transcoder, len(tokens_pos)), len(tokens_pos), memory_gb, baseline)
    rep = build_local_replacement(model, transcoder, tokens_pos)
    blocks = FrozenBlocks(model)
    n_active = len(rep.features)
    cache_decoders, plan, store_limit = True, {}, None
    if memory_gb is not None:
        n_logits = max_n_logits + len(custom_targets or [])
        W_O = blocks.W_O_head_e_d[0]
        shape = plan_decoders(_trace_shape(rep, transcoder, blocks.n_layers, n_logits, batch_size, baseline,
                                           (W_O.shape[0], W_O.shape[1])), memory_gb)
        rows_plan = plan_rows(shape, max_feature_nodes, memory_gb)
        max_feature_nodes, store_limit = rows_plan.n_chosen, rows_plan.store_limit
        cache_decoders = shape.cache_decoders
        plan = {"budget_gb": memory_gb, "n_active": n_active, "cap": max_feature_nodes, "store_limit": store_limit,
                "cache_decoders": cache_decoders, "baseline_bytes": baseline,
                "predicted_bytes": rows_plan.predicted_bytes}
    layout = SourceLayout(rep, transcoder, cache_decoders)
    logits = select_logits(rep, blocks.W_U_d_vocab, max_n_logits, desired_logit_prob)
    x_final = _final_norm_output(model, rep)
    for target in custom_targets or []:
        direction = target.direction_d.to(x_final.device).float()
        logits = add_custom_target(logits, target.label, direction, float(direction @ x_final), target.weight)
    timing["forward"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    n_chosen = n_active if max_feature_nodes is None else min(max_feature_nodes, n_active)
    bar = _progress_bar(progress, len(logits.labels) + n_chosen, recheck_threads)
    logit_rows = _rows_in_batches(rep, blocks, transcoder, layout, logit_seeds(rep, blocks, logits),
                                  batch_size, bar)
    if n_chosen == n_active and store_limit is None:
        chosen = torch.arange(n_active, device=logit_rows.device)
        feature_rows = _rows_in_batches(rep, blocks, transcoder, layout,
                                        feature_seeds(rep, blocks, transcoder, chosen), batch_size, bar)
    else:
        chosen, feature_rows = _choose_by_influence(rep, blocks, transcoder, layout, logits, logit_rows,
                                                    n_chosen, batch_size, bar, store_limit)
        logit_rows = logit_rows[:, graph_source_columns(chosen, layout)]
    bar.close()
    plan["n_chosen"] = len(chosen)
    timing["attribution"] = time.perf_counter() - t1
    return Attribution(rep, logits, chosen, logit_rows, feature_rows, layout,
                       graph_source_columns(chosen, layout), timing, plan)


def graph_source_columns(chosen: torch.Tensor, layout: SourceLayout) -> torch.Tensor:
    """The layout's columns the graph keeps: the chosen features, then every error and token."""
    rest = torch.arange(layout.n_features, layout.n_sources, device=chosen.device)
    return torch.cat([chosen, rest])


def _forward_bytes(model, transcoder, n_pos: int) -> int:
    cfg = model.cfg
    return forward_bytes(cfg.n_layers, cfg.n_heads, cfg.d_model, n_pos, transcoder.cfg.n_features, cfg.d_vocab)


def _trace_shape(rep, transcoder, n_layers: int, n_logits: int, batch_size: int, baseline: int,
                 W_O_shape: tuple[int, int]) -> TraceShape:
    f, d = rep.features, rep.embed_pos_d.shape[1]
    per_layer = torch.bincount(f.layer.cpu(), minlength=n_layers).tolist()
    n_out = [transcoder.W_dec[l].shape[1] for l in range(n_layers)]  # [F, n_out, d]
    batch = bounded_batch_size(batch_size, rep.n_pos, n_layers, d)
    kept = rep.patterns.nbytes + 4 * rep.error_layer_pos_d.numel() * rep.error_layer_pos_d.element_size()
    H, e = W_O_shape
    sweep_temps = 4 * batch * rep.n_pos * (2 * H * e + 6 * d)  # z and v per head; the [B, P, d] terms
    return TraceShape(n_active=len(f), n_errors=n_layers * (rep.n_pos - 1), n_pos=rep.n_pos, n_logits=n_logits,
                      decoder_floats=sum(c * o * d for c, o in zip(per_layer, n_out)),
                      gradient_bytes=4 * batch * rep.n_pos * (n_layers + 1) * d, batch_rows=batch,
                      sweep_temp_bytes=sweep_temps, fixed_bytes=kept, baseline_bytes=baseline)


def _choose_by_influence(rep, blocks, transcoder, layout, logits, logit_rows, n_chosen, batch_size, bar,
                         store_limit: int | None = None):
    """(chosen features in node order, their rows over the graph's sources): rounds of the most
    influential unvisited features (circuits.attribution.influence), their rows kept in a RowStore;
    with a `store_limit` (bytes) the choice stops before the store would pass it."""
    n_active = len(rep.features)
    store = RowStore(rep.features.layer, blocks.n_layers, layout.n_sources)
    flow_f = logit_flow(logits.weights.to(logit_rows.device).float(), logit_rows, n_active)
    max_depth = rep.error_layer_pos_d.shape[0] + 1
    batch = bounded_batch_size(batch_size, rep.n_pos, blocks.n_layers, rep.embed_pos_d.shape[1])
    while store.n_rows < n_chosen:
        influence = feature_influence(flow_f, store, max_depth)
        new = next_round(influence, store.visited, store.n_rows, n_chosen, batch_size, INFLUENCE_UPDATE_DIVISOR)
        if store_limit is not None:  # the most influential of them that the store still has room for
            fits = int((store.nbytes + store.row_bytes(new).cumsum(0) <= store_limit).sum())
            if fits < len(new):
                new, n_chosen = new[:fits], store.n_rows + fits
                if fits == 0:
                    break
        seeds = feature_seeds(rep, blocks, transcoder, new)
        order = torch.argsort(seeds.layer * (rep.n_pos + 1) + seeds.position)  # group causal cones
        for sl in _batches(len(new), batch):
            idx = order[sl]
            store.add(new[idx], compute_rows(rep, blocks, transcoder, layout, seeds.select(idx)))
            bar(len(idx))
    chosen = store.visited.sort().values  # node order follows rep.features (layer, position, feature)
    return chosen, store.chosen_rows(chosen)


def permute_rows_in_place(rows: torch.Tensor, order: torch.Tensor) -> None:
    """rows <- rows[order] with one spare row instead of a second copy of the block (the rows of
    a long prompt are gigabytes): each cycle of the permutation is rotated through the spare."""
    order = order.tolist()
    done = [False] * len(order)
    spare = torch.empty_like(rows[0]) if len(order) else None
    for start in range(len(order)):
        if done[start] or order[start] == start:
            continue
        spare.copy_(rows[start])
        i = start
        while order[i] != start:
            rows[i].copy_(rows[order[i]])
            done[i] = True
            i = order[i]
        rows[i].copy_(spare)
        done[i] = True


def _final_norm_output(model, rep: LocalReplacement) -> torch.Tensor:
    """ln_final(resid_final) [d] at the last position, with its frozen scale."""
    x = rep.resid_final_d
    norm = getattr(model, "ln_final", None)
    if norm is None:
        return x
    if (model.cfg.normalization_type or "").startswith("LN"):
        x = x - x.mean()
    x = x / rep.lnf_scale_pos[-1]
    w, b = getattr(norm, "w", None), getattr(norm, "b", None)
    x = x * w if w is not None else x
    return x + b if b is not None else x


def _progress_bar(enabled: bool, total: int, on_batch):
    """A callable run after each batch of rows: calls on_batch(), advances a tqdm bar if enabled."""
    bar = None
    if enabled:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="attribution rows", unit="row", leave=False)

    def update(n):
        on_batch()
        if bar is not None:
            bar.update(n)

    update.close = bar.close if bar is not None else (lambda: None)  # type: ignore[attr-defined]
    return update


def graph_edges(attr: Attribution) -> np.ndarray:
    """The graph's edges, float32 [n_targets, n_sources] (graphs.Graph.edges): rows = the chosen
    features then the logits, columns = the chosen features, errors, embeddings (the rows' own
    columns: a copy, no arithmetic)."""
    n_f = len(attr.feature_idx)
    edges = np.empty((n_f + attr.logit_rows.shape[0], attr.source_cols.shape[0]), dtype=np.float32)
    edges[:n_f] = attr.feature_rows.float().cpu().numpy()
    edges[n_f:] = attr.logit_rows.float().cpu().numpy()
    return edges


def dense_adjacency(attr: Attribution) -> np.ndarray:
    """The all-nodes square over graph nodes (chosen features, errors, embeddings, logits),
    float32 [n_nodes, n_nodes]: graph_edges placed in the rows of the features and logits."""
    edges = graph_edges(attr)
    n_f, n_l = len(attr.feature_idx), attr.logit_rows.shape[0]
    n_sources = edges.shape[1]
    square = np.zeros((n_sources + n_l, n_sources + n_l), dtype=np.float32)
    square[:n_f, :n_sources] = edges[:n_f]
    square[n_sources:, :n_sources] = edges[n_f:]
    return square
