"""Adjacency rows for a batch of targets: one frozen backward sweep, then edges to every source.

  A[t, s] = a_s * sum_{l_s <= l < l_t} W_dec_{s, l_s->l} . g_t(l, c_s)      (feature source)
  A[t, err(l, c)] = e_{l,c} . g_t(l, c)                                     (error source)
  A[t, emb(c)]    = x_emb_c . g_t(-1, c)                                    (token embedding)
where g_t(l, c) is the gradient of target t at MLP l's output hook, position c: the residual stream
after block l, or (mlp.hook_out on Gemma) that gradient through the frozen post-MLP norm. A batch seeded no deeper than layer l_top and no later than position c_top
only needs blocks below l_top and positions up to c_top (its causal cone): the rest is zero.

Source columns: all active features (in rep.features order), then error nodes (layer-major,
positions 1..P-1), then token embeddings (positions 0..P-1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from circuits.attribution.frozen_backward import FrozenBlocks
from circuits.attribution.targets import LogitTargets, TargetSeeds
from circuits.replacement.local import LocalReplacement


DECODER_BLOCK_FEATURES = 8192  # activation-scaled decoders read this many features at a time


class SourceLayout:
    """Column indices of the sources, and each source layer's activation-scaled decoders: kept for
    every active feature when `cache_decoders` (short prompts), else read from the (lazy)
    transcoder in blocks of DECODER_BLOCK_FEATURES per backward batch (long prompts)."""

    def __init__(self, rep: LocalReplacement, transcoder, cache_decoders: bool = True):
        f = rep.features
        self.features = f
        self.transcoder = transcoder
        self.n_layers = rep.error_layer_pos_d.shape[0]
        self.n_pos = rep.n_pos
        self.n_features = len(f)
        self.n_errors = self.n_layers * (self.n_pos - 1)
        self.n_sources = self.n_features + self.n_errors + self.n_pos
        # per source layer: [start, end) of its features and, per position, their sub-ranges
        self.layer_ranges: list[tuple[int, int]] = []
        self.pos_ranges: list[list[tuple[int, int, int]]] = []  # (pos, start, end)
        for l in range(self.n_layers):
            rows = (f.layer == l).nonzero(as_tuple=True)[0]
            start, end = (int(rows[0]), int(rows[-1]) + 1) if len(rows) else (0, 0)
            self.layer_ranges.append((start, end))
            pos = f.position[start:end]
            bounds = []
            if end > start:
                uniq, counts = pos.unique_consecutive(return_counts=True)
                offset = start
                for p, c in zip(uniq.tolist(), counts.tolist()):
                    bounds.append((p, offset, offset + c))
                    offset += c
            self.pos_ranges.append(bounds)
        self._cache: list[torch.Tensor] | None = None
        if cache_decoders:
            self._cache = [self._read(l, *self.layer_ranges[l]) for l in range(self.n_layers)]

    def _read(self, layer: int, start: int, end: int) -> torch.Tensor:
        """a * W_dec of the active features [start, end) of `layer` [n, n_out, d], float32."""
        f = self.features
        W = self.transcoder.decoder_rows(layer, f.feature[start:end]).float().to(f.activation.device)
        return W * f.activation[start:end, None, None]

    def scaled_decoders(self, layer: int, start: int, end: int) -> torch.Tensor:
        """a * W_dec [end - start, n_out, d] of the active features [start, end) (one layer's)."""
        if self._cache is not None:
            s0 = self.layer_ranges[layer][0]
            return self._cache[layer][start - s0:end - s0]
        return self._read(layer, start, end)

    def decoder_blocks(self, layer: int, n_pos: int):
        """The layer's position ranges below `n_pos`, grouped into blocks of at most
        DECODER_BLOCK_FEATURES features (a single position may exceed it): yields (scaled decoders
        of the block [n, n_out, d], its first column, its [(pos, start, end)] in columns)."""
        group: list[tuple[int, int, int]] = []
        for pos, start, end in self.pos_ranges[layer]:
            if pos >= n_pos:
                break
            if group and end - group[0][1] > DECODER_BLOCK_FEATURES:
                yield self._block(layer, group)
                group = []
            group.append((pos, start, end))
        if group:
            yield self._block(layer, group)

    def _block(self, layer, group):
        s0 = group[0][1]
        return self.scaled_decoders(layer, s0, group[-1][2]), s0, group

    def error_column(self, layer: int, pos: int) -> int:
        return self.n_features + layer * (self.n_pos - 1) + (pos - 1)

    def embedding_column(self, pos: int) -> int:
        return self.n_features + self.n_errors + pos


@torch.no_grad()
def compute_rows(rep: LocalReplacement, blocks: FrozenBlocks, transcoder, layout: SourceLayout,
                 seeds: TargetSeeds) -> torch.Tensor:
    """Adjacency rows [B, n_sources] for the targets in `seeds`."""
    B = len(seeds)
    d = rep.embed_pos_d.shape[1]
    device = rep.embed_pos_d.device
    l_top = int(seeds.layer.max())
    P = int(seeds.position.max()) + 1
    has_skip = transcoder.cfg.skip
    grad_b_p_d = torch.zeros(B, P, d, device=device)
    grad_p_b_l_d = torch.zeros(P, B, l_top, d, device=device)  # gradient after each block < l_top
    rows_at = {l: (seeds.layer == l).nonzero(as_tuple=True)[0] for l in seeds.layer.unique().tolist()}
    if l_top in rows_at and l_top == blocks.n_layers:  # logit-side targets read the final residual
        r = rows_at[l_top]
        grad_b_p_d[r, seeds.position[r]] += seeds.vec_d[r]
    post_mlp = rep.ln2_post_scale_layer_pos  # the transcoder writes before a post-MLP norm (or None)
    for l in range(min(l_top, blocks.n_layers - 1), -1, -1):
        if l < l_top:  # gradient at MLP l's output hook (zero for l >= l_top)
            g_out = blocks.output_hook_backward(l, grad_b_p_d, None if post_mlp is None else post_mlp[l, :P])
            grad_p_b_l_d[:, :, l] = g_out.transpose(0, 1)
        if has_skip and l < l_top:  # linear skip path resid_mid -> mlp_out (live at BOS too, as in circuit-tracer)
            g_x = g_out @ transcoder.skip_matrix(l).float().to(device).T
            grad_b_p_d = grad_b_p_d + blocks.input_hook_backward(
                l, g_x, rep.ln2_scale_layer_pos[l, :P], transcoder.cfg.input_hook)
        if l in rows_at:  # features of layer l read resid_mid of block l
            r = rows_at[l]
            grad_b_p_d[r, seeds.position[r]] += seeds.vec_d[r]
        post = None if rep.ln1_post_scale_layer_pos is None else rep.ln1_post_scale_layer_pos[l, :P]
        grad_b_p_d = grad_b_p_d + blocks.attention_backward(
            l, grad_b_p_d, rep.patterns.blocks(l, P), rep.ln1_scale_layer_pos[l, :P], post)

    return source_rows(rep, layout, grad_b_p_d, grad_p_b_l_d, l_top, P)


def source_rows(rep: LocalReplacement, layout: SourceLayout, grad_b_p_d: torch.Tensor,
                grad_p_b_l_d: torch.Tensor, l_top: int, P: int) -> torch.Tensor:
    """Rows [B, n_sources] from one sweep's gradients of B targets of one prompt: at the token
    embeddings (grad [B, >=P, d]) and at each MLP output hook below l_top (grad [>=P, B, >=l_top, d]),
    over the first P positions (the sweep's causal cone)."""
    B = grad_b_p_d.shape[0]
    rows = torch.zeros(B, layout.n_sources, device=grad_b_p_d.device)
    emb_start = layout.embedding_column(0)
    rows[:, emb_start:emb_start + P] = (grad_b_p_d[:, :P] * rep.embed_pos_d[:P]).sum(-1)
    if P > 1:  # one layer at a time: no permuted copy of the whole gradient block
        for l in range(l_top):
            c0 = layout.error_column(l, 1)
            rows[:, c0:c0 + P - 1] = torch.einsum("pbd,pd->bp", grad_p_b_l_d[1:P, :, l], rep.error_layer_pos_d[l, 1:P])
    for l_s in range(l_top):
        for dec, s0, ranges in layout.decoder_blocks(l_s, P):
            n_out = min(dec.shape[1], l_top - l_s)
            if n_out <= 0:
                break
            for pos, start, end in ranges:
                g_b_k = grad_p_b_l_d[pos, :, l_s:l_s + n_out].reshape(B, -1)
                dec_n_k = dec[start - s0:end - s0, :n_out].reshape(end - start, -1)
                rows[:, start:end] = g_b_k @ dec_n_k.T
    return rows


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


def graph_source_columns(chosen: torch.Tensor, layout: SourceLayout) -> torch.Tensor:
    """The layout's columns the graph keeps: the chosen features, then every error and token."""
    rest = torch.arange(layout.n_features, layout.n_sources, device=chosen.device)
    return torch.cat([chosen, rest])
