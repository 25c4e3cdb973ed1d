"""The feature index: what each transcoder feature fires on, from one pass over a corpus.

For every (layer, feature): its top-K activating contexts (a window of `before` tokens, the token
itself and `after` tokens, with the feature's activation on each token of the window), its firing
frequency (share of non-BOS tokens where it is active) and its mean activation when active.
Stored beside the transcoders as two files, written atomically, no pickle:
  feature_index.npz   top_acts [L, F, K] f32 (descending), top_tokens [L, F, K, W] i32 (-1 = none),
                      top_window_acts [L, F, K, W] f16, frequency [L, F] f32, mean_active [L, F] f32,
                      build_id [1] i64
  feature_index.json  meta: model, corpus, n_tokens, n_docs, k, before, after, build_id, token strings
The JSON is written last and carries the same build_id, so a half-written index is never read.
Position 0 (BOS) is never a context centre and never counted (METHOD.md section 2).
"""

from __future__ import annotations

import json
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from circuits.errors import CircuitsError
from circuits.hooks import capture_layers
from circuits.interventions import encode_inputs

INDEX_NPZ, INDEX_JSON = "feature_index.npz", "feature_index.json"
INDEX_SEQ_LEN = 128  # documents are read in windows of at most this many tokens (a context needs ~11)
_ARRAYS = ("top_acts", "top_tokens", "top_window_acts", "frequency", "mean_active", "build_id")


@dataclass
class Context:
    """One top-activating context of a feature."""

    activation: float        # the feature's activation on the centre token
    token_ids: list[int]     # the window (trimmed at document edges)
    tokens: list[str]
    acts: list[float]        # the feature's activation on each token of the window
    center: int              # index of the centre token in the window
    separator: str = ""      # " " for word-level tokenizers, "" when tokens carry their own spaces

    def text(self, mark: str = "[{}]") -> str:
        return self.separator.join(mark.format(t) if i == self.center else t for i, t in enumerate(self.tokens))


@dataclass
class FeatureIndex:
    top_acts: np.ndarray         # [L, F, K]
    top_tokens: np.ndarray       # [L, F, K, W]
    top_window_acts: np.ndarray  # [L, F, K, W]
    frequency_layer_feat: np.ndarray   # [L, F]
    mean_active_layer_feat: np.ndarray  # [L, F]
    meta: dict

    @property
    def n_layers(self) -> int:
        return int(self.top_acts.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.top_acts.shape[1])

    def _check(self, layer: int, feature: int) -> None:
        if not (0 <= layer < self.n_layers and 0 <= feature < self.n_features):
            raise CircuitsError(f"feature {layer}:{feature} does not exist in the index "
                                f"(layers 0-{self.n_layers - 1}, features 0-{self.n_features - 1})")

    def frequency(self, layer: int, feature: int) -> float:
        self._check(layer, feature)
        return float(self.frequency_layer_feat[layer, feature])

    def mean_activation(self, layer: int, feature: int) -> float:
        self._check(layer, feature)
        return float(self.mean_active_layer_feat[layer, feature])

    def top_contexts(self, layer: int, feature: int) -> list[Context]:
        """The feature's top contexts, strongest first (fewer than K if it rarely fires)."""
        self._check(layer, feature)
        strings = self.meta.get("token_strings", {})
        before = int(self.meta["before"])
        out = []
        for k in range(self.top_acts.shape[2]):
            act = float(self.top_acts[layer, feature, k])
            if not act > 0:
                break
            ids = self.top_tokens[layer, feature, k]
            keep = np.nonzero(ids >= 0)[0]
            lo, hi = int(keep.min()), int(keep.max()) + 1
            window = [int(i) for i in ids[lo:hi]]
            out.append(Context(act, window, [strings.get(str(i), f"<{i}>") for i in window],
                               [float(a) for a in self.top_window_acts[layer, feature, k, lo:hi]], before - lo,
                               self.meta.get("token_separator", "")))
        return out

    def label(self, layer: int, feature: int, width: int = 40) -> str:
        """A one-line label: the strongest context, centre token in brackets (or '' if never active)."""
        contexts = self.top_contexts(layer, feature)
        if not contexts:
            return ""
        text = contexts[0].text().replace("\n", " ")
        return text if len(text) <= width else "…" + text[-(width - 1):]


# --- building -------------------------------------------------------------------------------
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
    """Per (layer, feature), the K largest activations seen so far with their windows."""

    def __init__(self, k: int, L: int, F: int, before: int, after: int):
        self.k, self.before, self.after = k, before, after
        W = before + 1 + after
        self.acts_k_l_f = torch.zeros(k, L, F)
        self.tokens_k_l_f_w = torch.full((k, L, F, W), -1, dtype=torch.long)
        self.window_k_l_f_w = torch.zeros(k, L, F, W)

    def update(self, acts_b_t_l_f: torch.Tensor, tokens_b_t: torch.Tensor, in_doc_b_t: torch.Tensor) -> None:
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
        all_acts = torch.cat([self.acts_k_l_f, vals_k_l_f])
        self.acts_k_l_f, sel = all_acts.topk(self.k, dim=0)
        sel_w = sel[..., None].expand(-1, -1, -1, tokens.shape[-1])
        self.tokens_k_l_f_w = torch.cat([self.tokens_k_l_f_w, tokens]).gather(0, sel_w)
        self.window_k_l_f_w = torch.cat([self.window_k_l_f_w, window]).gather(0, sel_w)


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
                        meta: dict | None = None, progress: bool = False) -> FeatureIndex:
    """One pass over `docs` (token id tensors [pos], BOS first) -> the index (at most max_tokens tokens).

    Streaming: each batch's activations [B, T, L, F] are merged into running top-K tensors
    [K, L, F, window] and dropped, so memory is the model, one batch and the index itself (cut long
    documents into windows, see INDEX_SEQ_LEN: T bounds a batch); time is one forward pass per
    token plus the encoders."""
    from transcoders.threads import free_core_threads

    L, F = transcoder.cfg.n_layers, transcoder.cfg.n_features
    top = _RunningTopK(k, L, F, before, after)
    count_layer_feat, sum_layer_feat = torch.zeros(L, F, dtype=torch.float64), torch.zeros(L, F, dtype=torch.float64)
    n_tokens = n_docs = 0
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=max_tokens, desc="feature index", unit="tok", dynamic_ncols=True)
    with free_core_threads() as threads:  # a busy core gets no thread (transcoders/threads.py)
        for batch in _batches(docs, batch_size, max_tokens):
            tokens_b_t, in_doc_b_t = _padded(batch, model.cfg.device)
            counted_b_t = in_doc_b_t.clone()
            counted_b_t[:, 0] = False                                       # BOS carries no features
            acts = batch_activations(model, transcoder, tokens_b_t) * counted_b_t[..., None, None]
            count_layer_feat += (acts > 0).sum((0, 1)).cpu().double()
            sum_layer_feat += acts.sum((0, 1)).cpu().double()
            top.update(acts, tokens_b_t, in_doc_b_t)
            del acts
            n_batch = int(counted_b_t.sum())
            n_tokens, n_docs = n_tokens + n_batch, n_docs + len(batch)
            if bar is not None:
                bar.update(n_batch)
            threads.recheck()
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


def index_corpus(loaded, transcoder, transcoder_dir: str | Path, corpus: str | None = None,
                 max_tokens: int = 30_000, progress: bool = False, **kwargs) -> FeatureIndex:
    """Build the index of `transcoder` over `corpus` (default: the built-in model's own corpus, read
    in windows of INDEX_SEQ_LEN tokens) and save it into `transcoder_dir` (kwargs: build_feature_index's)."""
    from circuits.training.corpus import check_token_supply, corpus_sequences

    sequences, source = corpus_sequences(loaded, corpus, seq_len=min(INDEX_SEQ_LEN, loaded.model.cfg.n_ctx))
    check_token_supply(sequences, max_tokens)
    docs = (torch.tensor(seq, dtype=torch.long) for seq in sequences)
    index = build_feature_index(loaded.model, transcoder, docs, max_tokens=max_tokens,
                                meta={"model": loaded.name, "corpus": source}, progress=progress, **kwargs)
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


# --- files ----------------------------------------------------------------------------------
def _replace_atomically(path: Path, write) -> None:
    from safeio import OutputError, open_output

    try:
        with open_output(path, "feature index") as f:
            write(f)
    except OutputError as exc:
        raise CircuitsError(str(exc)) from None


def save_feature_index(index: FeatureIndex, transcoder_dir: str | Path) -> Path:
    """Write feature_index.npz then feature_index.json (same build_id) into `transcoder_dir`."""
    folder = Path(transcoder_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CircuitsError(f"cannot write the feature index to {folder}: {exc.strerror or exc}") from None
    build_id = int.from_bytes(os.urandom(6), "big")
    arrays = {"top_acts": index.top_acts, "top_tokens": index.top_tokens,
              "top_window_acts": index.top_window_acts, "frequency": index.frequency_layer_feat,
              "mean_active": index.mean_active_layer_feat, "build_id": np.array([build_id], dtype=np.int64)}
    meta = {**index.meta, "build_id": build_id}
    try:
        _replace_atomically(folder / INDEX_NPZ, lambda f: np.savez_compressed(f, **arrays))
        _replace_atomically(folder / INDEX_JSON, lambda f: f.write(json.dumps(meta).encode()))
    except OSError as exc:
        raise CircuitsError(f"cannot write the feature index to {folder}: {exc.strerror or exc}") from None
    index.meta = meta
    return folder / INDEX_NPZ


def load_feature_index(transcoder_dir: str | Path) -> FeatureIndex | None:
    """The index stored beside the transcoders, or None if there is none; a damaged one is an error."""
    folder = Path(transcoder_dir)
    if not (folder / INDEX_JSON).exists() or not (folder / INDEX_NPZ).exists():
        return None
    rebuild = f"rebuild it with `circuits features index --transcoders {folder}`"
    try:
        meta = json.loads((folder / INDEX_JSON).read_text())
        with np.load(folder / INDEX_NPZ, allow_pickle=False) as data:
            arrays = {name: data[name] for name in _ARRAYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise CircuitsError(f"the feature index in {folder} is damaged ({type(exc).__name__}); {rebuild}") from None
    if int(arrays["build_id"][0]) != meta.get("build_id"):
        raise CircuitsError(f"the feature index in {folder} is half-written (its two files differ); {rebuild}")
    return FeatureIndex(arrays["top_acts"], arrays["top_tokens"], arrays["top_window_acts"],
                        arrays["frequency"], arrays["mean_active"], meta)


# --- the output view ------------------------------------------------------------------------
@torch.no_grad()
def feature_logits(model, transcoder, layer: int, feature: int,
                   W_U_d_vocab: torch.Tensor | None = None) -> torch.Tensor:
    """The feature's direct logit effect [vocab] (float32, CPU): its decoders summed over the layers
    they write to (sum_l W_dec_{layer->l}) -> final norm (approx.: LayerNorm's centring and the
    norm's weight, its scale ignored) -> W_U, demeaned over the vocabulary. A transcoder writing
    before a post-MLP norm (mlp.hook_out on Gemma) goes through that norm's weight first."""
    from circuits.published_hooks import has_post_mlp_norm

    rows_k_d = transcoder.decoder_rows(layer, torch.tensor([feature]))[0].float()
    if transcoder.cfg.output_hook == "mlp.hook_out" and has_post_mlp_norm(model):
        post_w = torch.stack([model.blocks[layer + k].ln2_post.w.detach().float() for k in range(rows_k_d.shape[0])])
        rows_k_d = rows_k_d * post_w.to(rows_k_d.device)
    write_d = rows_k_d.sum(0)
    if model.cfg.normalization_type in ("LN", "LNPre"):
        write_d = write_d - write_d.mean()
    weight = getattr(getattr(model, "ln_final", None), "w", None)
    if weight is not None:
        write_d = write_d * weight.detach().float()
    if W_U_d_vocab is None:  # callers labelling many features pass it once (a float32 copy for bf16 models)
        W_U_d_vocab = model.W_U.detach().float()
    logits_vocab = write_d @ W_U_d_vocab
    return (logits_vocab - logits_vocab.mean()).cpu()


@torch.no_grad()
def output_view(model, transcoder, layer: int, feature: int, k: int = 8) -> dict[str, list[tuple[str, float]]]:
    """Tokens the feature's decoders most promote / suppress (`feature_logits`), with their logits."""
    if not (0 <= layer < transcoder.cfg.n_layers and 0 <= feature < transcoder.cfg.n_features):
        raise CircuitsError(f"feature {layer}:{feature} does not exist (layers 0-{transcoder.cfg.n_layers - 1}, "
                            f"features 0-{transcoder.cfg.n_features - 1})")
    logits_vocab = feature_logits(model, transcoder, layer, feature)
    tok = model.tokenizer

    def rows(values, ids):
        return [(tok.decode([int(i)]) if tok is not None else str(int(i)), float(v)) for v, i in zip(values, ids)]

    k = min(k, logits_vocab.shape[0])
    low_values, low_ids = (-logits_vocab).topk(k)
    return {"promoted": rows(*logits_vocab.topk(k)), "suppressed": rows(-low_values, low_ids)}
