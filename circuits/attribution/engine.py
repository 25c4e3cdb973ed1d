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
from typing import TYPE_CHECKING

import torch

from circuits.attribution.config import TraceConfig
from circuits.attribution.frozen_backward import FrozenBlocks
from circuits.attribution.memory import TraceShape, choose_feature_cap
from circuits.attribution.rows import Attribution, SourceLayout, compute_rows
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
    attr = attribution_rows(rm.model, rm.transcoder, tokens, config, progress=progress, threads=threads)
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
INFLUENCE_CHUNK_ROWS = 1024  # rows normalised at a time: no full-size copies of the feature rows


def _normalised_flow(flow_r: torch.Tensor, rows_r_s: torch.Tensor, n_features: int) -> torch.Tensor:
    """flow @ A_hat[:, :n_features], A_hat = |rows| with each row scaled to sum 1, in row chunks."""
    out = torch.zeros(n_features, dtype=rows_r_s.dtype, device=rows_r_s.device)
    for start in range(0, rows_r_s.shape[0], INFLUENCE_CHUNK_ROWS):
        a = rows_r_s[start:start + INFLUENCE_CHUNK_ROWS].abs()
        scale = flow_r[start:start + INFLUENCE_CHUNK_ROWS] / a.sum(1).clamp_min(1e-30)
        out += scale @ a[:, :n_features]
    return out


def _feature_influence(logit_rows: torch.Tensor, logit_weights: torch.Tensor, feature_rows: torch.Tensor,
                       visited: torch.Tensor, n_features: int, max_depth: int) -> torch.Tensor:
    """Influence w^T (A_hat + A_hat^2 + ...) on every active feature, from the rows known so far
    (unvisited features have no rows yet, so paths through them are not counted). feature_rows
    [len(visited), n_sources] holds the visited features' rows, in `visited` order."""
    flow = _normalised_flow(logit_weights, logit_rows, n_features)  # [n_features]
    influence = flow.clone()
    for _ in range(max_depth):
        if not len(visited):
            break
        flow = _normalised_flow(flow[visited], feature_rows, n_features)
        influence += flow
        if float(flow.abs().max()) < 1e-12:
            break
    return influence


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
        attr = _attribute(model, transcoder, tokens_pos, config, customs, progress, adaptive.recheck)
        attr.threads = adaptive.history
    return attr


def _attribute(model, transcoder, tokens_pos, config: TraceConfig, customs: list[CustomTarget], progress,
               recheck_threads) -> Attribution:
    timing = {}
    t0 = time.perf_counter()
    batch_size, max_feature_nodes = config.batch_size, config.max_feature_nodes
    rep = build_local_replacement(model, transcoder, tokens_pos)
    blocks = FrozenBlocks(model)
    n_active = len(rep.features)
    if config.memory_gb is not None:
        n_logits = config.max_n_logits + len(customs)
        shape = _trace_shape(rep, transcoder, blocks.n_layers, n_logits, batch_size)
        max_feature_nodes = choose_feature_cap(shape, max_feature_nodes, config.memory_gb)
    layout = SourceLayout(rep, transcoder)
    logits = choose_targets(model, rep, blocks, config, customs)
    timing["forward"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    n_chosen = n_active if max_feature_nodes is None else min(max_feature_nodes, n_active)
    bar = _progress_bar(progress, len(logits.labels) + n_chosen, recheck_threads)
    logit_rows = _rows_in_batches(rep, blocks, transcoder, layout, logit_seeds(rep, blocks, logits),
                                  batch_size, bar)
    if n_chosen == n_active:
        chosen = torch.arange(n_active, device=logit_rows.device)
        feature_rows = _rows_in_batches(rep, blocks, transcoder, layout,
                                        feature_seeds(rep, blocks, transcoder, chosen), batch_size, bar)
    else:
        chosen, feature_rows = _choose_by_influence(rep, blocks, transcoder, layout, logits, logit_rows,
                                                    n_chosen, batch_size, bar)
    bar.close()
    timing["attribution"] = time.perf_counter() - t1
    return Attribution(rep, logits, chosen, logit_rows, feature_rows, layout, timing)


def _trace_shape(rep, transcoder, n_layers: int, n_logits: int, batch_size: int) -> TraceShape:
    f, d = rep.features, rep.embed_pos_d.shape[1]
    per_layer = torch.bincount(f.layer.cpu(), minlength=n_layers).tolist()
    n_out = [transcoder.W_dec[l].shape[1] for l in range(n_layers)]  # [F, n_out, d]
    batch = bounded_batch_size(batch_size, rep.n_pos, n_layers, d)
    return TraceShape(n_active=len(f), n_errors=n_layers * (rep.n_pos - 1), n_pos=rep.n_pos, n_logits=n_logits,
                      decoder_floats=sum(c * o * d for c, o in zip(per_layer, n_out)),
                      gradient_bytes=4 * batch * rep.n_pos * (n_layers + 1) * d)


def _choose_by_influence(rep, blocks, transcoder, layout, logits, logit_rows, n_chosen, batch_size, bar):
    n_active = len(rep.features)
    device = logit_rows.device
    visited = torch.empty(n_chosen, dtype=torch.long, device=device)
    feature_rows = torch.empty(n_chosen, layout.n_sources, device=device)  # filled in visiting order
    weights = logits.weights.to(device).float()
    n_done = 0
    while n_done < n_chosen:
        influence = _feature_influence(logit_rows, weights, feature_rows[:n_done], visited[:n_done], n_active,
                                       rep.error_layer_pos_d.shape[0] + 1)
        influence[visited[:n_done]] = -1.0
        # influence is re-estimated after every quarter of growth (at least one batch): the cost of
        # re-estimating grows with the rows known, so per-batch updates made long prompts quadratic
        k = min(max(batch_size, n_done // INFLUENCE_UPDATE_DIVISOR), n_chosen - n_done)
        new = influence.topk(k).indices
        _rows_in_batches(rep, blocks, transcoder, layout, feature_seeds(rep, blocks, transcoder, new), batch_size,
                         bar, out=feature_rows[n_done:n_done + k])
        visited[n_done:n_done + k] = new
        n_done += k
    order = torch.argsort(visited)  # node order follows rep.features (layer, position, feature)
    permute_rows_in_place(feature_rows, order)
    return visited[order], feature_rows


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

    update.close = bar.close if bar is not None else (lambda: None)  # type: ignore[attr-defined]
    return update
