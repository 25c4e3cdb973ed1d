"""attribute(rm, prompt, config) -> Graph: the attribution graph of one prompt (METHOD.md section 3).

    graph = attribute(ReplacementModel.load("world"), "calc: 36+59=", TraceConfig())

0. Tokens (the model's context checked) and the custom targets (checked) before any work.
1. Freeze the local replacement model of the prompt (circuits.replacement.local).
2. Targets: the top logits (and custom directions), then the active features - all of them, or
   the `max_feature_nodes` with the largest estimated influence on the logits, chosen in rounds
   from the rows computed so far (as the reference implementation does; a round adds a quarter of
   the rows known, at least one batch).
3. Rows come from batched frozen backward sweeps (circuits.attribution.rows), batches sorted by
   (layer, position) so each sweep only covers its causal cone (`attribution_rows`).
4. The graph (circuits.attribution.to_graph), labelled once the rows are freed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from circuits.attribution.config import TraceConfig
from circuits.attribution.frozen_backward import FrozenBlocks
from circuits.attribution.influence import feature_influence, logit_flow, next_round
from circuits.attribution.memory import (TraceShape, check_forward_fits, forward_bytes, plan_decoders, plan_rows,
                                         resident_bytes)
from circuits.attribution.row_split import current_row_split
from circuits.attribution.row_store import RowStore
from circuits.attribution.rows import Attribution, SourceLayout, compute_rows, graph_source_columns
from circuits.attribution.targets import (CustomTarget, TargetSeeds, choose_targets, custom_targets,
                                          feature_seeds, logit_seeds)
from circuits.attribution.to_graph import label_features, to_graph
from circuits.replacement.local import build_local_replacement
from graphs import Graph
from transcoders.threads import free_core_threads

if TYPE_CHECKING:
    from circuits.replacement.model import ReplacementModel


def attribute(rm: ReplacementModel, prompt: str, config: TraceConfig | None = None, *, progress: bool = False,
              threads: int | None = None) -> Graph:
    """The prompt's full attribution graph, labelled (feature index, else output view for the
    features the config's node threshold keeps). The rows (every active feature as a source) live
    only inside this call."""
    config = config or TraceConfig()
    tokens = rm.tokens(prompt)
    return labelled_graph(rm, prompt, config,  # the only reference to the rows: freed before labelling
                          attribution_rows(rm.model, rm.transcoder, tokens, config, progress=progress, threads=threads))


def labelled_graph(rm: ReplacementModel, prompt: str, config: TraceConfig, attr: Attribution) -> Graph:
    """The graph stage: the Attribution as a Graph (its rows copied, then freed when the caller
    keeps no reference), labelled."""
    graph = to_graph(attr, rm.model, rm.transcoder, prompt, model_identity=rm.identity,
                     transcoder_path=str(rm.transcoder_dir) if rm.transcoder_dir else None,
                     settings=config.model_dump())
    del attr
    label_features(graph, rm.model, rm.transcoder, rm.index, config.node_threshold)
    return graph


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


GRADIENT_BUDGET_BYTES = 1 << 30  # per batch: the stored gradients [P, B, L, d] stay below this


GRADIENT_BUDGET_SHARE = 1 / 16  # under a memory budget, one sweep's gradients take at most this share of it


def bounded_batch_size(batch_size: int, n_pos: int, n_layers: int, d_model: int,
                       memory_gb: float | None = None) -> int:
    """Shrink the batch so one sweep's stored gradients fit GRADIENT_BUDGET_BYTES, and
    GRADIENT_BUDGET_SHARE of a memory budget (long prompts: the rest holds more chosen rows)."""
    per_row = 4 * n_pos * (n_layers + 1) * d_model
    budget = GRADIENT_BUDGET_BYTES
    if memory_gb is not None:
        budget = min(budget, int(memory_gb * 2 ** 30 * GRADIENT_BUDGET_SHARE))
    return max(1, min(batch_size, budget // per_row))


@dataclass
class RowRequest:
    """What the rows stage asks for: the adjacency rows of `seeds` over `layout`'s sources, in
    seed order (compute_rows(rep, blocks, transcoder, layout, seeds)). The stage is a generator
    that yields one request per backward batch and receives its rows: one prompt's driver
    (`run_rows`) computes each request alone; the batched entry (circuits.attribution.batched)
    computes the requests of several prompts in shared sweeps."""

    rep: object
    layout: SourceLayout
    seeds: TargetSeeds


def run_rows(steps, blocks, transcoder):
    """Drive one prompt's rows stage: each request computed alone, in order; returns its result."""
    rows = None
    while True:
        try:
            req = steps.send(rows)
        except StopIteration as stop:
            return stop.value
        rows = compute_rows(req.rep, blocks, transcoder, req.layout, req.seeds)


def _rows_in_batches(rep, layout, seeds: TargetSeeds, batch_size: int, progress,
                     out: torch.Tensor | None = None):
    """(generator) Rows [len(seeds), n_sources] in seed order, written into `out` when given (a
    view of a larger preallocated block: no temporary copy)."""
    if out is None:
        out = torch.empty(len(seeds), layout.n_sources, device=seeds.vec_d.device)
    order = torch.argsort(seeds.layer * (rep.n_pos + 1) + seeds.position)  # group causal cones
    split = current_row_split()  # torchrun: this rank computes its share of the batches (row_split.py)
    batches = list(_batches(len(seeds), batch_size))
    for j, sl in enumerate(batches):
        if split is None or split.mine(j):
            idx = order[sl]
            out[idx] = yield RowRequest(rep, layout, seeds.select(idx))
        progress(sl.stop - sl.start)
    if split is not None:
        split.gather(out, order, batches)
    return out


INFLUENCE_UPDATE_DIVISOR = 4


@torch.no_grad()
def attribution_rows(model, transcoder, tokens_pos: torch.Tensor, config: TraceConfig, *,
                     customs: list[CustomTarget] | None = None, progress: bool = False,
                     threads: int | None = None) -> Attribution:
    """Adjacency rows for the logit targets and the active features of one prompt (the stage
    before the graph). config.max_feature_nodes None: every active feature; with a
    config.memory_gb budget it means the default cap instead (circuits.attribution.memory), and an
    explicit cap that does not fit is refused. `customs`: the custom targets, when the caller made
    them already (else from config.targets / config.contrast, checked before the forward pass).

    Runs on the CPU cores free now (at most torch's thread count; `threads` fixes it), re-checked
    between batches: see transcoders.threads for why a busy core must not get a thread."""
    if customs is None:
        customs = custom_targets(model, config.targets, config.contrast)
    with free_core_threads(threads) as adaptive:
        blocks = FrozenBlocks(model)
        steps = attribution_steps(model, transcoder, blocks, tokens_pos, config, customs, progress, adaptive.recheck)
        attr = run_rows(steps, blocks, transcoder)
        attr.threads = adaptive.history
    return attr


def attribution_steps(model, transcoder, blocks: FrozenBlocks, tokens_pos, config: TraceConfig,
                      customs: list[CustomTarget], progress, recheck_threads):
    """(generator) The stages of `attribution_rows` for one prompt: yields a RowRequest per backward
    batch, receives its rows, returns the Attribution (drive it with `run_rows`)."""
    timing = {}
    t0 = time.perf_counter()
    batch_size, max_feature_nodes, memory_gb = config.batch_size, config.max_feature_nodes, config.memory_gb
    baseline = resident_bytes() if memory_gb is not None else 0
    check_forward_fits(_forward_bytes(model, transcoder, len(tokens_pos)), len(tokens_pos), memory_gb, baseline)
    rep = build_local_replacement(model, transcoder, tokens_pos)
    n_active = len(rep.features)
    # rows per backward sweep; influence rounds still grow by at least config.batch_size
    sweep = bounded_batch_size(batch_size, rep.n_pos, blocks.n_layers, rep.embed_pos_d.shape[1], memory_gb)
    cache_decoders, plan, store_limit = True, {}, None
    if memory_gb is not None:
        n_logits = config.max_n_logits + len(customs)
        W_O = blocks.W_O_head_e_d[0]
        shape = plan_decoders(_trace_shape(rep, transcoder, blocks.n_layers, n_logits, sweep, baseline,
                                           (W_O.shape[0], W_O.shape[1])), memory_gb)
        rows_plan = plan_rows(shape, max_feature_nodes, memory_gb)
        max_feature_nodes, store_limit = rows_plan.n_chosen, rows_plan.store_limit
        cache_decoders = shape.cache_decoders
        plan = {"budget_gb": memory_gb, "n_active": n_active, "cap": max_feature_nodes, "store_limit": store_limit,
                "cache_decoders": cache_decoders, "baseline_bytes": baseline,
                "predicted_bytes": rows_plan.predicted_bytes}
    layout = SourceLayout(rep, transcoder, cache_decoders)
    logits = choose_targets(model, rep, blocks, config, customs)
    timing["forward"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    n_chosen = n_active if max_feature_nodes is None else min(max_feature_nodes, n_active)
    bar = _progress_bar(progress, len(logits.labels) + n_chosen, recheck_threads)
    logit_rows = yield from _rows_in_batches(rep, layout, logit_seeds(rep, blocks, logits), sweep, bar)
    if n_chosen == n_active and store_limit is None:
        chosen = torch.arange(n_active, device=logit_rows.device)
        feature_rows = yield from _rows_in_batches(rep, layout, feature_seeds(rep, blocks, transcoder, chosen),
                                                   sweep, bar)
    else:
        chosen, feature_rows = yield from _choose_by_influence(rep, blocks, transcoder, layout, logits, logit_rows,
                                                               n_chosen, batch_size, bar, store_limit, sweep)
        logit_rows = logit_rows[:, graph_source_columns(chosen, layout)]
    bar.close()
    plan["n_chosen"] = len(chosen)
    timing["attribution"] = time.perf_counter() - t1
    return Attribution(rep, logits, chosen, logit_rows, feature_rows, layout,
                       graph_source_columns(chosen, layout), timing, plan)


def _forward_bytes(model, transcoder, n_pos: int) -> int:
    cfg = model.cfg
    return forward_bytes(cfg.n_layers, cfg.n_heads, cfg.d_model, n_pos, transcoder.cfg.n_features, cfg.d_vocab)


def _trace_shape(rep, transcoder, n_layers: int, n_logits: int, batch_size: int, baseline: int,
                 W_O_shape: tuple[int, int]) -> TraceShape:
    f, d = rep.features, rep.embed_pos_d.shape[1]
    per_layer = torch.bincount(f.layer.cpu(), minlength=n_layers).tolist()
    n_out = [transcoder.W_dec[l].shape[1] for l in range(n_layers)]  # [F, n_out, d]
    batch = batch_size  # rows per sweep, already bounded
    kept = rep.patterns.nbytes + 4 * rep.error_layer_pos_d.numel() * rep.error_layer_pos_d.element_size()
    H, e = W_O_shape
    sweep_temps = 4 * batch * rep.n_pos * (2 * H * e + 6 * d)  # z and v per head; the [B, P, d] terms
    return TraceShape(n_active=len(f), n_errors=n_layers * (rep.n_pos - 1), n_pos=rep.n_pos, n_logits=n_logits,
                      decoder_floats=sum(c * o * d for c, o in zip(per_layer, n_out)),
                      gradient_bytes=4 * batch * rep.n_pos * (n_layers + 1) * d, batch_rows=batch,
                      sweep_temp_bytes=sweep_temps, fixed_bytes=kept, baseline_bytes=baseline)


def _choose_by_influence(rep, blocks, transcoder, layout, logits, logit_rows, n_chosen, batch_size, bar,
                         store_limit: int | None = None, sweep: int | None = None):
    """(generator) (chosen features in node order, their rows over the graph's sources): rounds of the most
    influential unvisited features (circuits.attribution.influence), their rows kept in a RowStore;
    with a `store_limit` (bytes) the choice stops before the store would pass it."""
    n_active = len(rep.features)
    store = RowStore(rep.features.layer, blocks.n_layers, layout.n_sources)
    flow_f = logit_flow(logits.weights.to(logit_rows.device).float(), logit_rows, n_active)
    max_depth = rep.error_layer_pos_d.shape[0] + 1
    batch = sweep or bounded_batch_size(batch_size, rep.n_pos, blocks.n_layers, rep.embed_pos_d.shape[1])
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
            store.add(new[idx], (yield RowRequest(rep, layout, seeds.select(idx))))
            bar(len(idx))
        if store_limit is not None and store.n_rows < n_chosen:  # the rows the store will hold, at this mean
            expected = store.n_rows * store_limit // max(store.nbytes, 1)
            bar.set_total(len(logits.labels) + int(min(n_chosen, expected)))
    bar.set_total(len(logits.labels) + store.n_rows)
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

    def set_total(total: int) -> None:  # the rows expected, once a full row store tells
        if bar is not None and total != bar.total:
            bar.total = total
            bar.refresh()

    update.close = bar.close if bar is not None else (lambda: None)  # type: ignore[attr-defined]
    update.set_total = set_total  # type: ignore[attr-defined]
    return update
