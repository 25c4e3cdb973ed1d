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

import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from circuits.errors import CircuitsError, write_output

INDEX_NPZ, INDEX_JSON = "feature_index.npz", "feature_index.json"
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


# --- files ----------------------------------------------------------------------------------
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
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        write_output(folder / INDEX_NPZ, buffer.getvalue(), "feature index")
        write_output(folder / INDEX_JSON, json.dumps(meta), "feature index")
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
