"""Feature pages: what a transcoder feature reads and writes, in circuit-tracer's feature format.

One page per (layer, feature), a JSON document in the Anthropic / circuit-tracer feature format
(index, examples_quantiles, top_logits, bottom_logits, act_min, act_max, quantile_values,
histogram, activation_frequency) with our extras beside it:
- examples: the top-activating contexts of the feature index (`circuits features index`), the
  centre token's position in `train_token_ind`, every token's activation in `tokens_acts_list`;
- activation_frequency: the index's firing frequency (share of non-BOS corpus tokens);
- histogram: the feature's non-zero activations in 20 equal bins on (0, act_max]; counted over a
  corpus sample when the server has the model and a built-in corpus (`histogram_source`), else
  over the tokens of its top contexts;
- top_logits / bottom_logits: the output view (decoders -> unembedding), needs the model;
- neighbours: the features whose decoders (summed over output layers) have the highest cosine
  similarity with this one's, over every layer; needs the transcoder.
`index` is the node's `feature` field in our graph JSON (Cantor pairing of layer and feature),
so a viewer that fetches `{index}.json` finds the page of the node it shows.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from circuits.errors import CircuitsError, write_output
from graphs.neuronpedia import feature_json_index

N_BINS = 20
HISTOGRAM_TOKENS = 20_000  # corpus tokens read once (lazily) for the histograms
N_NEIGHBOURS = 10
N_LOGITS = 10
_BLOCK = 8192  # decoder rows read at a time for the neighbours


@dataclass
class FeatureSource:
    """What is known about the features: any of the feature index, transcoder and model may be None."""

    index: Any = None        # circuits.features.store.FeatureIndex
    transcoder: Any = None   # transcoders.Transcoder
    loaded: Any = None       # circuits.models.registry.LoadedModel
    transcoder_id: str = ""
    model_lock: Any = None   # held while the model runs (serve: the LiveModel's lock; hooks are global)
    _hist: np.ndarray | None = None  # int64 [L, F, N_BINS]
    _hist_source: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def available(self) -> bool:
        return any(x is not None for x in (self.index, self.transcoder))

    def shape(self) -> tuple[int, int]:
        if self.transcoder is not None:
            return self.transcoder.cfg.n_layers, self.transcoder.cfg.n_features
        if self.index is not None:
            return self.index.n_layers, self.index.n_features
        raise CircuitsError("no feature data: pass --transcoders (with a feature index) to see feature pages")

    def check(self, layer: int, feature: int) -> None:
        n_layers, n_features = self.shape()
        if not (0 <= layer < n_layers and 0 <= feature < n_features):
            raise CircuitsError(f"feature {layer}:{feature} does not exist "
                                f"(layers 0-{n_layers - 1}, features 0-{n_features - 1})")

    def page(self, layer: int, feature: int) -> dict[str, Any]:
        """The feature's page (see the module docstring)."""
        self.check(layer, feature)
        examples, frequency, act_max = _index_part(self.index, layer, feature)
        counts, hist_source = self._histogram(layer, feature, act_max, examples)
        top, bottom = self._output_view(layer, feature)
        window_acts = [a for ex in examples for a in ex["tokens_acts_list"]]
        return {
            "index": feature_json_index(layer, feature),
            "transcoder_id": self.transcoder_id,
            "layer": layer, "feature": feature,
            "examples_quantiles": [{"quantile_name": "Top activations", "examples": examples}] if examples else [],
            "top_logits": [t for t, _ in top], "bottom_logits": [t for t, _ in bottom],
            "top_logits_values": [v for _, v in top], "bottom_logits_values": [v for _, v in bottom],
            "act_min": float(min(window_acts, default=0.0)), "act_max": float(act_max),
            "quantile_values": [ex["activation"] for ex in examples],
            "histogram": counts, "histogram_edges": _edges(act_max), "histogram_source": hist_source,
            "activation_frequency": frequency,
            "neighbours": self._neighbours(layer, feature),
            "label": self.index.label(layer, feature) if self.index is not None else "",
        }

    # ---- parts that need the model or transcoder ----------------------------------------
    def _output_view(self, layer: int, feature: int) -> tuple[list, list]:
        if self.loaded is None or self.transcoder is None:
            return [], []
        from circuits.features.output_view import output_view

        view = output_view(self.loaded.model, self.transcoder, layer, feature, k=N_LOGITS)
        return view["promoted"], view["suppressed"]

    @torch.no_grad()
    def _neighbours(self, layer: int, feature: int) -> list[dict[str, Any]]:
        if self.transcoder is None:
            return []
        tc = self.transcoder
        query_d = tc.decoder_rows(layer, torch.tensor([feature]))[0].float().sum(0)
        query_d = query_d / query_d.norm().clamp_min(1e-12)
        scored = []
        for l_src in range(tc.cfg.n_layers):
            for start in range(0, tc.cfg.n_features, _BLOCK):
                ids = torch.arange(start, min(start + _BLOCK, tc.cfg.n_features))
                dirs_f_d = tc.decoder_rows(l_src, ids).float().sum(1)
                cos_f = dirs_f_d @ query_d / dirs_f_d.norm(dim=1).clamp_min(1e-12)
                if l_src == layer:
                    cos_f[ids == feature] = -2.0  # not its own neighbour
                values, top = cos_f.topk(min(N_NEIGHBOURS, cos_f.shape[0]))
                scored += [(float(v), l_src, int(ids[i])) for v, i in zip(values, top) if v > -2.0]
        scored.sort(reverse=True)
        label = self.index.label if self.index is not None else (lambda l, f: "")
        return [{"layer": l, "feature": f, "cosine": v, "label": label(l, f)}
                for v, l, f in scored[:N_NEIGHBOURS]]

    def _histogram(self, layer: int, feature: int, act_max: float, examples: list[dict]) -> tuple[list[int], str]:
        hist = self._corpus_histograms()
        if hist is not None:
            return [int(c) for c in hist[layer, feature]], self._hist_source
        acts = np.array([a for ex in examples for a in ex["tokens_acts_list"] if a > 0], dtype=np.float64)
        counts = _bin(acts, act_max)
        return [int(c) for c in counts], "tokens of the top contexts" if examples else "none"

    def _corpus_histograms(self) -> np.ndarray | None:
        """[L, F, N_BINS] counts over a corpus sample, computed once (needs model, transcoder, index
        and a built-in corpus); None when not possible."""
        if self.loaded is None or self.transcoder is None or self.index is None:
            return None
        with self._lock:
            if self._hist is None and self._hist_source == "":
                with self.model_lock or threading.Lock():
                    self._hist, self._hist_source = _corpus_histograms(self.loaded, self.transcoder, self.index)
            return self._hist


def _index_part(index, layer: int, feature: int) -> tuple[list[dict], float | None, float]:
    """(examples, activation_frequency, act_max) from the feature index (empty without one)."""
    if index is None:
        return [], None, 0.0
    examples = [{"tokens": ctx.tokens, "tokens_acts_list": [round(a, 5) for a in ctx.acts],
                 "train_token_ind": ctx.center, "is_repeated_datapoint": False,
                 "activation": ctx.activation}
                for ctx in index.top_contexts(layer, feature)]
    act_max = max((ex["activation"] for ex in examples), default=0.0)
    return examples, index.frequency(layer, feature), act_max


def _edges(act_max: float) -> list[float]:
    return [float(x) for x in np.linspace(0.0, act_max, N_BINS + 1)] if act_max > 0 else []


def _bin(acts: np.ndarray, act_max: float) -> np.ndarray:
    if act_max <= 0 or acts.size == 0:
        return np.zeros(N_BINS, dtype=np.int64)
    idx = np.clip(np.floor(acts / act_max * N_BINS).astype(np.int64), 0, N_BINS - 1)
    return np.bincount(idx, minlength=N_BINS)


@torch.no_grad()
def _corpus_histograms(loaded, transcoder, index) -> tuple[np.ndarray | None, str]:
    from circuits.features.index import _padded, batch_activations
    from circuits.corpora.sequences import corpus_sequences, take_sequences

    try:
        seqs, source = corpus_sequences(loaded, None, seq_len=loaded.model.cfg.n_ctx)
    except CircuitsError:
        return None, "none"
    L, F = transcoder.cfg.n_layers, transcoder.cfg.n_features
    act_max_l_f = torch.from_numpy(index.top_acts[..., 0].astype(np.float32)).clamp_min(1e-12)
    counts = torch.zeros(L * F * N_BINS, dtype=torch.int64)
    base_l_f = (torch.arange(L * F).reshape(L, F) * N_BINS)
    n_tokens = 0
    docs = [torch.tensor(s, dtype=torch.long) for s in take_sequences(seqs, HISTOGRAM_TOKENS)]
    for start in range(0, len(docs), 16):
        tokens_b_t, in_doc_b_t = _padded(docs[start:start + 16], loaded.model.cfg.device)
        in_doc_b_t[:, 0] = False  # BOS carries no features
        acts_b_t_l_f = batch_activations(loaded.model, transcoder, tokens_b_t).float().cpu()
        acts_n_l_f = acts_b_t_l_f[in_doc_b_t.cpu()]
        n_tokens += acts_n_l_f.shape[0]
        active = acts_n_l_f > 0
        bins = (acts_n_l_f / act_max_l_f * N_BINS).floor().long().clamp(0, N_BINS - 1)
        flat = (base_l_f + bins)[active]
        counts += torch.bincount(flat, minlength=counts.shape[0])
    return counts.reshape(L, F, N_BINS).numpy(), f"{n_tokens} tokens of {source}"


def export_feature_pages(source: FeatureSource, features: list[tuple[int, int]], out_dir) -> list:
    """Write `{index}.json` per (layer, feature) into `out_dir` (created; existing pages of the same
    name are replaced, nothing else is touched). Returns the paths."""
    import json
    from pathlib import Path

    from safeio import OutputError, check_output_dir

    out = Path(out_dir)
    try:  # a file, a parent that is a file, an unwritable place: one line, before any page is made
        check_output_dir(out, "feature pages folder")
    except OutputError as err:
        raise CircuitsError(str(err)) from None
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for layer, feature in sorted(set(features)):
        page = source.page(layer, feature)
        path = out / f"{page['index']}.json"
        write_output(path, json.dumps(page, ensure_ascii=False, allow_nan=False) + "\n", "feature page")
        paths.append(path)
    return paths
