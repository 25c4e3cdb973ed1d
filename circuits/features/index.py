"""Building the feature index: one pass of a transcoder over a corpus (the stored form and its
reader are circuits.features.store).

    index(rm)                       # the built-in model's own corpus, saved beside rm's transcoders
    index_corpus(loaded, transcoder, folder)      # the same without a ReplacementModel (first-use training)
    build_feature_index(model, transcoder, docs)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np
import torch

from circuits.corpora.sequences import corpus_sequences, fit_token_supply
from circuits.errors import CircuitsError
from circuits.features.sharded import BatchCounts, merge_ranks, my_batches, round_counts
from circuits.features.store import FeatureIndex, save_feature_index
from circuits.interventions import encode_inputs
from circuits.replacement.hooks import capture_layers
from transcoders.threads import free_core_threads

if TYPE_CHECKING:
    from circuits.replacement.model import ReplacementModel

INDEX_SEQ_LEN = 128  # documents are read in windows of at most this many tokens (a context needs ~11)


def _padded(batch: list[torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded tokens [B, T] and the in-document mask [B, T] (causal: padding never leaks back)."""
    T = max(int(t.shape[0]) for t in batch)
    tokens_b_t = torch.zeros(len(batch), T, dtype=torch.long, device=device)
    in_doc_b_t = torch.zeros(len(batch), T, dtype=torch.bool, device=device)
    for i, t in enumerate(batch):
        tokens_b_t[i, : t.shape[0]] = t
        in_doc_b_t[i, : t.shape[0]] = True
    return tokens_b_t, in_doc_b_t


@torch.no_grad()
def batch_activations(model, transcoder, tokens_b_t: torch.Tensor) -> torch.Tensor:
    """Feature activations [B, T, L, F] of a batch of token sequences."""
    x_b_t_layer_d = capture_layers(model, tokens_b_t, transcoder.cfg.input_hook, logits=False).x_b_t_layer_d
    return encode_inputs(transcoder, x_b_t_layer_d)


class _RunningTopK:
    """Per (layer, feature), the K largest activations seen so far with their windows.

    Order among equal activations: the earlier candidate wins (key = batch index * K + rank in its
    batch's top K; the empty start has key -1). With that total order the top K of a union is
    the top K of the parts' top Ks, so ranks that each index a shard of the batches merge to
    exactly the one-process result (circuits.features.sharded)."""

    def __init__(self, k: int, L: int, F: int, before: int, after: int):
        self.k, self.before, self.after = k, before, after
        W = before + 1 + after
        self.acts_k_l_f = torch.zeros(k, L, F)
        self.keys_k_l_f = torch.full((k, L, F), -1, dtype=torch.long)
        self.tokens_k_l_f_w = torch.full((k, L, F, W), -1, dtype=torch.long)
        self.window_k_l_f_w = torch.zeros(k, L, F, W)

    def update(self, acts_b_t_l_f: torch.Tensor, tokens_b_t: torch.Tensor, in_doc_b_t: torch.Tensor,
               batch_index: int = 0) -> None:
        B, T, L, F = acts_b_t_l_f.shape
        acts_b_t_l_f, tokens_b_t, in_doc_b_t = acts_b_t_l_f.cpu().float(), tokens_b_t.cpu(), in_doc_b_t.cpu()
        k = min(self.k, B * T)
        vals_k_l_f, flat_k_l_f = acts_b_t_l_f.reshape(B * T, L, F).topk(k, dim=0)
        b, t = (flat_k_l_f // T)[..., None], (flat_k_l_f % T)[..., None]
        tw = t + torch.arange(-self.before, self.after + 1)            # [k, L, F, W]
        twc = tw.clamp(0, T - 1)
        inside = (tw >= 0) & (tw < T) & in_doc_b_t[b, twc]
        tokens = torch.where(inside, tokens_b_t[b, twc], -1)
        l_idx = torch.arange(L)[None, :, None, None]
        f_idx = torch.arange(F)[None, None, :, None]
        window = torch.where(inside, acts_b_t_l_f[b, twc, l_idx, f_idx], 0.0)
        keys = (batch_index * self.k + torch.arange(k))[:, None, None].expand(k, L, F)
        self.merge(vals_k_l_f, keys, tokens, window)

    def merge(self, acts_k_l_f, keys_k_l_f, tokens_k_l_f_w, window_k_l_f_w) -> None:
        """Keep the top K of the kept entries and these (largest activation first, then smallest key)."""
        acts = torch.cat([self.acts_k_l_f, acts_k_l_f])
        keys = torch.cat([self.keys_k_l_f, keys_k_l_f])
        by_key = keys.argsort(dim=0, stable=True)
        by_act = acts.gather(0, by_key).argsort(dim=0, descending=True, stable=True)
        sel = by_key.gather(0, by_act)[:self.k]
        self.acts_k_l_f, self.keys_k_l_f = acts.gather(0, sel), keys.gather(0, sel)
        sel_w = sel[..., None].expand(-1, -1, -1, tokens_k_l_f_w.shape[-1])
        self.tokens_k_l_f_w = torch.cat([self.tokens_k_l_f_w, tokens_k_l_f_w]).gather(0, sel_w)
        self.window_k_l_f_w = torch.cat([self.window_k_l_f_w, window_k_l_f_w]).gather(0, sel_w)


def _batches(docs: Iterable[torch.Tensor], batch_size: int, max_tokens: int) -> Iterator[list[torch.Tensor]]:
    batch, seen = [], 0
    for doc in docs:
        if seen >= max_tokens:
            break
        if doc.shape[0] < 2:
            continue
        doc = doc[: max_tokens - seen + 1]  # BOS is not counted
        batch.append(doc)
        seen += doc.shape[0] - 1
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


@torch.no_grad()
def build_feature_index(model, transcoder, docs: Iterable[torch.Tensor], max_tokens: int = 100_000,
                        k: int = 10, before: int = 8, after: int = 2, batch_size: int = 16,
                        meta: dict | None = None, progress: bool = False, info=None) -> FeatureIndex:
    """One pass over `docs` (token id tensors [pos], BOS first) -> the index (at most max_tokens tokens).

    Streaming: each batch's activations [B, T, L, F] are merged into running top-K tensors
    [K, L, F, window] and dropped, so memory is the model, one batch and the index itself (cut long
    documents into windows, see INDEX_SEQ_LEN: T bounds a batch); time is one forward pass per
    token plus the encoders.

    Under torch.distributed (`info`: a transcoders.distributed.DistInfo of several ranks) batch j
    is run by rank j mod N and the ranks merge exactly: every rank adds the counts and sums of each
    round's batches in batch order, and the top-K windows are merged once at the end by their total
    order (circuits.features.sharded); the index is identical to one process's."""

    L, F = transcoder.cfg.n_layers, transcoder.cfg.n_features
    top = _RunningTopK(k, L, F, before, after)
    count_layer_feat, sum_layer_feat = torch.zeros(L, F, dtype=torch.float64), torch.zeros(L, F, dtype=torch.float64)
    n_tokens = n_docs = 0
    bar = None
    if progress and (info is None or info.is_main):
        from tqdm import tqdm
        bar = tqdm(total=max_tokens, desc="feature index", unit="tok", dynamic_ncols=True)
    with free_core_threads() as threads:  # a busy core gets no thread (transcoders/threads.py)
        for j, batch in my_batches(_batches(docs, batch_size, max_tokens), info):
            part = None
            if batch is not None:
                tokens_b_t, in_doc_b_t = _padded(batch, model.cfg.device)
                counted_b_t = in_doc_b_t.clone()
                counted_b_t[:, 0] = False                                       # BOS carries no features
                acts = batch_activations(model, transcoder, tokens_b_t) * counted_b_t[..., None, None]
                part = BatchCounts((acts > 0).sum((0, 1)).cpu().double(), acts.sum((0, 1)).cpu().double(),
                                   int(counted_b_t.sum()), len(batch))
                top.update(acts, tokens_b_t, in_doc_b_t, j)
                del acts
            for got in round_counts(part, info, L, F):  # every rank's batch of this round, in batch order
                count_layer_feat += got.count_l_f
                sum_layer_feat += got.sum_l_f
                n_tokens, n_docs = n_tokens + got.n_tokens, n_docs + got.n_docs
                if bar is not None:
                    bar.update(got.n_tokens)
            threads.recheck()
    merge_ranks(top, info)
    if bar is not None:
        bar.close()
    if n_tokens == 0:
        raise CircuitsError("the corpus is empty: no document has a token after BOS")
    top_tokens = top.tokens_k_l_f_w.permute(1, 2, 0, 3).numpy().astype(np.int32)
    top_acts = top.acts_k_l_f.permute(1, 2, 0).numpy().astype(np.float32)
    top_tokens[top_acts <= 0] = -1
    used = np.unique(top_tokens[top_tokens >= 0])
    tok = model.tokenizer
    strings = {str(int(i)): (tok.decode([int(i)]) if tok is not None else f"<{int(i)}>") for i in used}
    info = {"token_separator": _token_separator(tok, [int(i) for i in used[-2:]]),"format": "circuits-feature-index", "version": 1, "n_tokens": n_tokens, "n_docs": n_docs,
            "k": k, "before": before, "after": after, "n_layers": L, "n_features": F,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **(meta or {}), "token_strings": strings}
    count = count_layer_feat.numpy()
    return FeatureIndex(
        top_acts=top_acts, top_tokens=top_tokens,
        top_window_acts=top.window_k_l_f_w.permute(1, 2, 0, 3).numpy().astype(np.float16),
        frequency_layer_feat=(count / n_tokens).astype(np.float32),
        mean_active_layer_feat=(sum_layer_feat.numpy() / np.maximum(count, 1)).astype(np.float32),
        meta=info)


def index(rm: ReplacementModel, corpus: str | None = None, max_tokens: int = 30_000, progress: bool = False,
          **kwargs) -> FeatureIndex:
    """Build the feature index of a replacement model's transcoders over `corpus` (default: the
    built-in model's own) and save it beside them, where rm.index reads it (kwargs:
    index_corpus's; `info` of several ranks: the corpus sharded over them, rank 0 saves)."""
    if rm.transcoder_dir is None:
        raise CircuitsError("the transcoders were not loaded from a folder: there is nowhere to store the index")
    built = index_corpus(rm.loaded, rm.transcoder, rm.transcoder_dir, corpus, max_tokens, progress, **kwargs)
    rm._index = built
    return built


def index_corpus(loaded, transcoder, transcoder_dir: str | Path, corpus: str | None = None,
                 max_tokens: int = 30_000, progress: bool = False, strict_tokens: bool = False,
                 info=None, **kwargs) -> FeatureIndex:
    """Build the index of `transcoder` over `corpus` (default: the built-in model's own corpus, read
    in windows of INDEX_SEQ_LEN tokens) and save it into `transcoder_dir` (kwargs: build_feature_index's)."""

    sequences, source = corpus_sequences(loaded, corpus, seq_len=min(INDEX_SEQ_LEN, loaded.model.cfg.n_ctx))
    max_tokens = fit_token_supply(sequences, max_tokens, strict_tokens)  # strict: the user's own --tokens
    docs = (torch.tensor(seq, dtype=torch.long) for seq in sequences)
    index = build_feature_index(loaded.model, transcoder, docs, max_tokens=max_tokens,
                                meta={"model": loaded.name, "corpus": source}, progress=progress, info=info, **kwargs)
    if info is None or info.is_main:
        save_feature_index(index, transcoder_dir)
    return index


def _token_separator(tokenizer, ids: list[int]) -> str:
    """' ' if the tokenizer puts a space between decoded tokens (word-level), else ''."""
    if tokenizer is None or len(ids) < 2:
        return ""
    a, b = (tokenizer.decode([i]) for i in ids)
    return " " if tokenizer.decode(ids) == f"{a} {b}" else ""


def tokenize_corpus(model, texts: Iterable[str]) -> Iterator[torch.Tensor]:
    """Token ids [pos] (BOS first, cut to the model's context) for each non-empty text."""
    for text in texts:
        if text.strip():
            yield model.to_tokens(text, prepend_bos=True)[0, : model.cfg.n_ctx].cpu()
