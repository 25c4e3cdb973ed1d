"""Rows of several prompts in shared backward sweeps (issue 21): `attribute_many`.

    for graph in attribute_many(rm, [(prompt, config), ...], batch_prompts=8): ...

Each prompt runs its own rows stage (engine.attribution_steps: its local replacement, targets and
influence rounds), a generator that asks for one backward batch of rows at a time (a RowRequest).
Here the pending requests of up to `batch_prompts` prompts are pooled: one frozen backward sweep
carries the rows of all of them, each row through its own prompt's frozen state (attention
patterns, norm scales), then each prompt's rows are read off at its own sources
(rows.source_rows) and handed back to its generator.

Padding: the sweep covers the longest causal cone P of the pooled rows. A prompt with n < P
positions has its patterns padded with PATTERN_PAD = 0 (no query attends to or from a padded
position) and its norm scales with SCALE_PAD = 1 (no 0/0); its seeds sit at real positions, so the
gradient at its padded positions stays exactly zero, and its sources are read at its own n
positions only. The graphs equal the single-prompt graphs up to float rounding (a matmul over a
larger batch may sum in another order): tests/circuits/batch/test_batched.py asserts 1e-6
relative, and that padding the patterns with anything else breaks it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from circuits.attribution.config import TraceConfig
from circuits.attribution.engine import RowRequest, attribution_steps, bounded_batch_size, labelled_graph
from circuits.attribution.frozen_backward import FrozenBlocks
from circuits.attribution.rows import source_rows
from circuits.attribution.targets import custom_targets
from graphs import Graph
from transcoders.threads import free_core_threads

if TYPE_CHECKING:
    from circuits.replacement.model import ReplacementModel

PATTERN_PAD = 0.0  # attention weight to and from a padded position
SCALE_PAD = 1.0  # frozen norm scale at a padded position


def attribute_many(rm: ReplacementModel, prompts: list[tuple[str, TraceConfig]], batch_prompts: int,
                   threads: int | None = None) -> Iterator[Graph]:
    """The labelled full graph of each (prompt, config), in order; the rows of up to `batch_prompts`
    prompts at a time share backward sweeps (of at most their configs' batch sizes summed)."""
    for start in range(0, len(prompts), batch_prompts):
        group = prompts[start:start + batch_prompts]
        with free_core_threads(threads) as adaptive:
            blocks = FrozenBlocks(rm.model)
            steps = []
            for prompt, config in group:
                customs = custom_targets(rm.model, config.targets, config.contrast)
                steps.append(attribution_steps(rm.model, rm.transcoder, blocks, rm.tokens(prompt), config, customs,
                                               False, adaptive.recheck))
            t0 = time.perf_counter()
            attrs = run_shared(steps, blocks, rm.transcoder, sum(config.batch_size for _, config in group))
            seconds = time.perf_counter() - t0
        for attr in attrs:
            attr.threads = adaptive.history
            attr.timing_seconds["shared"] = seconds / len(group)  # its share of the group's forwards and sweeps
        for i, (prompt, config) in enumerate(group):
            attr, attrs[i] = attrs[i], None  # the graph stage holds the only reference to the rows
            yield labelled_graph(rm, prompt, config, attr)


def run_shared(steps: list, blocks: FrozenBlocks, transcoder, max_rows: int) -> list:
    """Drive several prompts' rows stages together: each round pools every prompt's pending request
    into shared sweeps (whole requests, packed by `_sweeps`); returns each prompt's Attribution."""
    results: list = [None] * len(steps)
    pending: dict[int, RowRequest] = {}

    def advance(i: int, rows) -> None:
        try:
            pending[i] = steps[i].send(rows)
        except StopIteration as stop:
            results[i] = stop.value

    for i in range(len(steps)):
        advance(i, None)
    while pending:
        ids = sorted(pending)
        reqs = [pending.pop(i) for i in ids]
        answers: dict[int, torch.Tensor] = {}
        for part in _sweeps(reqs, blocks, max_rows):
            for j, rows in zip(part, compute_rows_shared([reqs[j] for j in part], blocks, transcoder)):
                answers[j] = rows
        for j, i in enumerate(ids):
            advance(i, answers[j])
    return results


PACK_WASTE = 1.1  # a shared sweep does at most this much of the separate sweeps' arithmetic


def _cone(req: RowRequest) -> tuple[int, int]:
    """(deepest layer, positions) of a request's causal cone: its sweep's cost is about
    rows x layer x positions."""
    return int(req.seeds.layer.max()), int(req.seeds.position.max()) + 1


def _sweeps(reqs: list[RowRequest], blocks: FrozenBlocks, max_rows: int) -> Iterator[list[int]]:
    """The requests (indices) packed into sweeps: in order of their causal cones, a request joins
    the current sweep while the sweep stays within max_rows rows (and engine.bounded_batch_size's
    memory bound) and within PACK_WASTE of the arithmetic of separate sweeps (rows of a shallow cone
    swept through a deep one cost the deep one's layers: a feature of layer 2 beside a logit row
    would cost it all the layers)."""
    d = reqs[0].rep.embed_pos_d.shape[1]
    cones = [_cone(r) for r in reqs]
    part: list[int] = []
    rows = separate = 0
    for j in sorted(range(len(reqs)), key=lambda j: cones[j]):
        n, (layer, pos) = len(reqs[j].seeds), cones[j]
        if part:
            top, P = max(cones[i][0] for i in part + [j]), max(cones[i][1] for i in part + [j])
            shared = (rows + n) * max(top, 1) * P
            limit = bounded_batch_size(max_rows, P, blocks.n_layers, d)
            if rows + n > limit or shared > PACK_WASTE * (separate + n * max(layer, 1) * pos):
                yield part
                part, rows, separate = [], 0, 0
        part.append(j)
        rows += n
        separate += n * max(layer, 1) * pos
    if part:
        yield part


def _padded(values: list[torch.Tensor], P: int, fill: float) -> torch.Tensor:
    """[K, ..., P] from per-prompt [..., n_i] (cut or padded with `fill` on the last axis)."""
    out = torch.full((len(values), *values[0].shape[:-1], P), fill, device=values[0].device)
    for i, v in enumerate(values):
        m = min(P, v.shape[-1])
        out[i, ..., :m] = v[..., :m]
    return out


def _prompt_patterns(reqs: list[RowRequest], H: int, layer: int, P: int, sizes: list[int]) -> list[tuple]:
    """Per request, (0, its prompt's causal pattern of `layer` [H, P, P] with PATTERN_PAD outside its
    n x n, its rows' slice): the attention backward applies each to its own prompt's rows."""
    out, start = [], 0
    for req, n_rows in zip(reqs, sizes):
        m = min(P, req.rep.n_pos)
        padded = torch.full((H, P, P), PATTERN_PAD, device=req.seeds.vec_d.device)
        padded[:, :m, :m] = 0.0
        for q0, block in req.rep.patterns.blocks(layer, m):
            padded[:, q0:q0 + block.shape[1], :block.shape[2]] = block
        out.append((0, padded, slice(start, start + n_rows)))
        start += n_rows
    return out


@torch.no_grad()
def compute_rows_shared(reqs: list[RowRequest], blocks: FrozenBlocks, transcoder) -> list[torch.Tensor]:
    """The rows of several prompts' requests from one frozen backward sweep: per request, rows
    [len(seeds), its n_sources] as rows.compute_rows gives them (to float rounding)."""
    sizes = [len(r.seeds) for r in reqs]
    layer = torch.cat([r.seeds.layer for r in reqs])
    position = torch.cat([r.seeds.position for r in reqs])
    vec_b_d = torch.cat([r.seeds.vec_d for r in reqs])
    device = vec_b_d.device
    owner = torch.repeat_interleave(torch.arange(len(reqs), device=device), torch.tensor(sizes, device=device))
    B, d = vec_b_d.shape
    l_top = int(layer.max())
    P = int(position.max()) + 1
    reps = [r.rep for r in reqs]
    ln1 = _padded([r.ln1_scale_layer_pos for r in reps], P, SCALE_PAD)[owner]  # [B, L, P]
    ln2 = _padded([r.ln2_scale_layer_pos for r in reps], P, SCALE_PAD)[owner]
    ln1_post = None if reps[0].ln1_post_scale_layer_pos is None else \
        _padded([r.ln1_post_scale_layer_pos for r in reps], P, SCALE_PAD)[owner]
    post_mlp = None if reps[0].ln2_post_scale_layer_pos is None else \
        _padded([r.ln2_post_scale_layer_pos for r in reps], P, SCALE_PAD)[owner]
    grad_b_p_d = torch.zeros(B, P, d, device=device)
    grad_p_b_l_d = torch.zeros(P, B, l_top, d, device=device)
    rows_at = {l: (layer == l).nonzero(as_tuple=True)[0] for l in layer.unique().tolist()}
    if l_top in rows_at and l_top == blocks.n_layers:
        r = rows_at[l_top]
        grad_b_p_d[r, position[r]] += vec_b_d[r]
    for l in range(min(l_top, blocks.n_layers - 1), -1, -1):  # as rows.compute_rows, a scale per row
        if l < l_top:
            g_out = blocks.output_hook_backward(l, grad_b_p_d, None if post_mlp is None else post_mlp[:, l])
            grad_p_b_l_d[:, :, l] = g_out.transpose(0, 1)
        if transcoder.cfg.skip and l < l_top:
            g_x = g_out @ transcoder.skip_matrix(l).float().to(device).T
            grad_b_p_d = grad_b_p_d + blocks.input_hook_backward(l, g_x, ln2[:, l], transcoder.cfg.input_hook)
        if l in rows_at:
            r = rows_at[l]
            grad_b_p_d[r, position[r]] += vec_b_d[r]
        pattern = _prompt_patterns(reqs, blocks.W_O_head_e_d[l].shape[0], l, P, sizes)
        grad_b_p_d = grad_b_p_d + blocks.attention_backward(
            l, grad_b_p_d, pattern, ln1[:, l], None if ln1_post is None else ln1_post[:, l])
    out, start = [], 0
    for req, n in zip(reqs, sizes):
        sl = slice(start, start + n)
        start += n
        out.append(source_rows(req.rep, req.layout, grad_b_p_d[sl], grad_p_b_l_d[:, sl],
                               int(req.seeds.layer.max()), min(P, req.rep.n_pos)))
    return out
