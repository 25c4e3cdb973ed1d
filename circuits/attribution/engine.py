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
from circuits.attribution.memory import (TraceShape, check_forward_fits, forward_bytes, pattern_layers_kept,
                                         plan_decoders, plan_rows, resident_bytes)
from circuits.attribution.row_split import current_row_split
from circuits.attribution.row_store import RowStore
from circuits.attribution.rows import Attribution, SourceLayout, compute_rows, graph_source_columns
from circuits.attribution.streamed_rows import StreamedRowStore
from circuits.attribution.targets import (CustomTarget, TargetSeeds, choose_targets, custom_targets,
                                          feature_seeds, logit_seeds)
from circuits.attribution.to_graph import label_features, to_graph
from circuits.replacement.frozen_patterns import rebuild_temp_bytes, rebuildable
from circuits.replacement.local import LocalReplacement, build_local_replacement
from graphs import Graph
from transcoders.cpu_memory import release_freed_memory
from transcoders.threads import free_core_threads

if TYPE_CHECKING:
    from circuits.replacement.model import ReplacementModel


def attribute(rm: ReplacementModel, prompt: str, config: TraceConfig | None = None, *, progress: bool = False,
              threads: int | None = None) -> Graph:
    """The prompt's full attribution graph, labelled (feature index, else output view for the
    features the config's node threshold keeps). The rows (every active feature as a source) live
    only inside this call."""
    return _attribute_graph(rm, prompt, config, progress, threads, keep=False)[0]


def attribute_keeping_replacement(rm: ReplacementModel, prompt: str, config: TraceConfig | None = None, *,
                                  progress: bool = False, threads: int | None = None
                                  ) -> tuple[Graph, LocalReplacement, SourceLayout]:
    """attribute(), also returning the local replacement model and source layout the graph was
    computed on (what `--qk` explains: circuits.attention.attach reuses them instead of a second
    forward pass and decoder read). The rows are freed before labelling, as in attribute()."""
    return _attribute_graph(rm, prompt, config, progress, threads, keep=True)


def _attribute_graph(rm, prompt, config, progress, threads, keep: bool):
    config = config or TraceConfig()
    tokens = rm.tokens(prompt)
    held = [attribution_rows(rm.model, rm.transcoder, tokens, config, progress=progress, threads=threads)]
    rep, layout = (held[0].rep, held[0].layout) if keep else (None, None)
    # pop: labelled_graph holds the only reference to the rows, so they are freed before labelling
    return labelled_graph(rm, prompt, config, held.pop()), rep, layout


def labelled_graph(rm: ReplacementModel, prompt: str, config: TraceConfig, attr: Attribution) -> Graph:
    """The graph stage: the Attribution as a Graph, labelled once the rows are freed (the caller
    must hold no other reference to `attr` for that)."""
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
                     out: torch.Tensor | None = None, cols: torch.Tensor | None = None):
    """(generator) Rows [len(seeds), n_sources] in seed order (only the columns `cols` when given),
    written into `out` when given (a view of a larger preallocated block: no temporary copy)."""
    if out is None:
        width = layout.n_sources if cols is None else len(cols)
        out = torch.empty(len(seeds), width, device=seeds.vec_d.device)
    order = torch.argsort(seeds.layer * (rep.n_pos + 1) + seeds.position)  # group causal cones
    split = current_row_split()  # torchrun: this rank computes its share of the batches (row_split.py)
    batches = list(_batches(len(seeds), batch_size))
    for j, sl in enumerate(batches):
        if split is None or split.mine(j):
            idx = order[sl]
            rows = yield RowRequest(rep, layout, seeds.select(idx))
            out[idx] = rows if cols is None else rows[:, cols]
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
    cfg = model.cfg
    kept_layers = pattern_layers_kept(cfg.n_layers, cfg.n_heads, len(tokens_pos), memory_gb)
    if not rebuildable(model):
        kept_layers = cfg.n_layers
    forward_need = _forward_bytes(model, transcoder, len(tokens_pos), kept_layers)
    check_forward_fits(forward_need, len(tokens_pos), memory_gb, baseline)
    rep = build_local_replacement(model, transcoder, tokens_pos,
                                  rebuild_from=kept_layers if kept_layers < cfg.n_layers else None)
    release_freed_memory()  # the forward's temporaries: resident memory back to what is alive
    n_active = len(rep.features)
    # rows per backward sweep; influence rounds still grow by at least config.batch_size
    sweep = bounded_batch_size(batch_size, rep.n_pos, blocks.n_layers, rep.embed_pos_d.shape[1], memory_gb)
    cache_decoders, plan, store_limit, streamed = True, {}, None, False
    if memory_gb is not None:
        n_logits = config.max_n_logits + len(customs)
        W_O = blocks.W_O_head_e_d[0]
        shape = plan_decoders(_trace_shape(rep, transcoder, blocks.n_layers, n_logits, sweep, baseline,
                                           (W_O.shape[0], W_O.shape[1])), memory_gb)
        rows_plan = plan_rows(shape, max_feature_nodes, memory_gb)
        max_feature_nodes, store_limit, streamed = rows_plan.n_chosen, rows_plan.store_limit, rows_plan.streamed
        cache_decoders = shape.cache_decoders
        plan = {"budget_gb": memory_gb, "n_active": n_active, "cap": max_feature_nodes, "store_limit": store_limit,
                "streamed": streamed, "cache_decoders": cache_decoders, "baseline_bytes": baseline,
                "patterns_rebuilt_layers": cfg.n_layers - kept_layers,
                "predicted_bytes": rows_plan.predicted_bytes, "forward_predicted_bytes": baseline + forward_need}
    layout = SourceLayout(rep, transcoder, cache_decoders)
    logits = choose_targets(model, rep, blocks, config, customs)
    timing["forward"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    n_chosen = n_active if max_feature_nodes is None else min(max_feature_nodes, n_active)
    bar = _progress_bar(progress, len(logits.labels) + (2 if streamed else 1) * n_chosen, recheck_threads)
    logit_rows = yield from _rows_in_batches(rep, layout, logit_seeds(rep, blocks, logits), sweep, bar)
    if n_chosen == n_active and store_limit is None and not streamed:
        chosen = torch.arange(n_active, device=logit_rows.device)
        feature_rows = yield from _rows_in_batches(rep, layout, feature_seeds(rep, blocks, transcoder, chosen),
                                                   sweep, bar)
    elif streamed:  # phase 1: choose on the rows' sketches; phase 2: the chosen rows again, graph columns only
        store = StreamedRowStore(n_active, logit_rows.device)
        yield from _choose_by_influence(rep, blocks, transcoder, logits, logit_rows, n_chosen, batch_size, bar,
                                        store, layout, sweep=sweep)
        chosen = store.visited.sort().values
        del store
        logit_rows = logit_rows[:, graph_source_columns(chosen, layout)]
        feature_rows = yield from _rows_in_batches(rep, layout, feature_seeds(rep, blocks, transcoder, chosen),
                                                   sweep, bar, cols=graph_source_columns(chosen, layout))
    else:
        store = RowStore(rep.features.layer, blocks.n_layers, layout.n_sources)
        yield from _choose_by_influence(rep, blocks, transcoder, logits, logit_rows, n_chosen, batch_size, bar,
                                        store, layout, store_limit, sweep)
        chosen = store.visited.sort().values  # node order follows rep.features (layer, position, feature)
        feature_rows = store.chosen_rows(chosen)
        plan["store_bytes"] = store.nbytes
        del store
        logit_rows = logit_rows[:, graph_source_columns(chosen, layout)]
    bar.close()
    plan["n_chosen"] = len(chosen)
    if memory_gb is not None:  # the memory model at the rows actually kept (beside the plan's prediction)
        plan["predicted_final_bytes"] = shape.bytes_for(len(chosen), plan.get("store_bytes"), streamed)
    timing["attribution"] = time.perf_counter() - t1
    return Attribution(rep, logits, chosen, logit_rows, feature_rows, layout,
                       graph_source_columns(chosen, layout), timing, plan)


def _forward_bytes(model, transcoder, n_pos: int, kept_layers: int | None = None) -> int:
    cfg = model.cfg
    n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    return forward_bytes(cfg.n_layers, cfg.n_heads, cfg.d_model, n_pos, transcoder.cfg.n_features, cfg.d_vocab,
                         n_kv_heads=n_kv, d_head=cfg.d_head, kept_layers=kept_layers)


def _trace_shape(rep, transcoder, n_layers: int, n_logits: int, batch_size: int, baseline: int,
                 W_O_shape: tuple[int, int]) -> TraceShape:
    f, d = rep.features, rep.embed_pos_d.shape[1]
    per_layer = torch.bincount(f.layer.cpu(), minlength=n_layers).tolist()
    n_out = [transcoder.W_dec[l].shape[1] for l in range(n_layers)]  # [F, n_out, d]
    batch = batch_size  # rows per sweep, already bounded
    kept = rep.patterns.nbytes + 4 * rep.error_layer_pos_d.numel() * rep.error_layer_pos_d.element_size()
    H, e = W_O_shape
    sweep_temps = 4 * batch * rep.n_pos * (2 * H * e + 6 * d)  # z and v per head; the [B, P, d] terms
    if rep.patterns.rebuild:  # one query block's scores and pattern, rebuilt per layer
        sweep_temps += rebuild_temp_bytes(H, rep.n_pos)
    return TraceShape(n_active=len(f), n_errors=n_layers * (rep.n_pos - 1), n_pos=rep.n_pos, n_logits=n_logits,
                      decoder_floats=sum(c * o * d for c, o in zip(per_layer, n_out)),
                      gradient_bytes=4 * batch * rep.n_pos * (n_layers + 1) * d, batch_rows=batch,
                      sweep_temp_bytes=sweep_temps, fixed_bytes=kept, baseline_bytes=baseline)


def _choose_by_influence(rep, blocks, transcoder, logits, logit_rows, n_chosen, batch_size, bar, store, layout,
                         store_limit: int | None = None, sweep: int | None = None):
    """(generator) Rounds of the most influential unvisited features (circuits.attribution.influence), their
    rows kept in `store` (a RowStore, exact; or a StreamedRowStore, sketches); with a `store_limit`
    (bytes) the choice stops before the store would pass it. The chosen features are store.visited."""
    n_active = len(rep.features)
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
        release_freed_memory()  # this round's freed temporaries, so the store's budget is what stays resident
        if store_limit is not None and store.n_rows < n_chosen:  # the rows the store will hold, at this mean
            expected = store.n_rows * store_limit // max(store.nbytes, 1)
            bar.set_total(len(logits.labels) + int(min(n_chosen, expected)))
    if store_limit is not None:
        bar.set_total(len(logits.labels) + store.n_rows)


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
