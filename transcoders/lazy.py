"""A transcoder read from memory-mapped files: rows are fetched when used, never the whole decoder.

Same interface as `Transcoder` for everything tracing needs (encode_layer / activate_layer / decode,
encoder_rows / decoder_rows / skip_matrix, W_enc[l], W_dec[l][rows], b_enc, b_dec, threshold, cfg).
Weights stay in the files' dtype (bf16 / fp16 / fp32) and are cast per use to `dtype` (float32 by
default), so products accumulate in float32. Encoding a layer reads its encoder in chunks of
`ENC_CHUNK` features and then drops the layer's pages from RSS; decoding reads only the decoder
rows of features that are active somewhere in the batch.

An optional input scale w [L, d] (a folded norm weight, see `fold_input_norm`) multiplies the input
before the encoder and the skip term, exactly as if it had been multiplied into W_enc and W_skip.
"""

from __future__ import annotations

import torch
from torch import nn

from transcoders.config import TranscoderConfig
from transcoders.formats_read import LayerViews
from transcoders.tensor_files import release
from transcoders.rules import TranscoderRules, weight_digest

ENC_CHUNK = 8192  # encoder rows cast to float32 at a time


class MappedTensor:
    """A mapped tensor that indexes like a tensor and returns (device, dtype) copies of what is read."""

    def __init__(self, t: torch.Tensor, owner: "LazyTranscoder"):
        self._t, self._owner = t, owner

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, torch.Tensor):
            idx = idx.cpu()
        elif isinstance(idx, tuple):
            idx = tuple(i.cpu() if isinstance(i, torch.Tensor) else i for i in idx)
        return self._t[idx].to(self._owner.device, self._owner.dtype)

    def detach(self) -> "MappedTensor":
        return self

    @property
    def shape(self) -> torch.Size:
        return self._t.shape

    @property
    def dtype(self) -> torch.dtype:
        return self._owner.dtype

    @property
    def storage_dtype(self) -> torch.dtype:
        return self._t.dtype

    @property
    def device(self) -> torch.device:
        return self._owner.device

    def float(self) -> torch.Tensor:  # the whole tensor: avoid on big decoders
        return self[:].float()


class LayerStack:
    """Per-layer mapped tensors indexed as one stacked tensor: [l], [l, rows], [l, rows, cols]."""

    def __init__(self, views: list[torch.Tensor], owner: "LazyTranscoder"):
        self.layers = [MappedTensor(v, owner) for v in views]
        self._owner = owner

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, tuple):
            layer, rest = idx[0], idx[1:]
        else:
            layer, rest = idx, ()
        if not isinstance(layer, int):
            raise TypeError("index a lazily loaded transcoder's weights one layer at a time")
        return self.layers[layer][rest if rest else slice(None)]

    def __len__(self) -> int:
        return len(self.layers)

    def detach(self) -> "LayerStack":
        return self

    @property
    def shape(self) -> torch.Size:
        return torch.Size([len(self.layers), *self.layers[0].shape])

    @property
    def dtype(self) -> torch.dtype:
        return self._owner.dtype

    @property
    def device(self) -> torch.device:
        return self._owner.device


class LazyTranscoder(TranscoderRules, nn.Module):
    """A CLT or PLT whose weight matrices live in mapped files (see the module doc)."""

    def __init__(self, cfg: TranscoderConfig, layers: list[LayerViews], source: str = "",
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        super().__init__()
        self.cfg, self.source, self._dtype = cfg, source, dtype
        self._device = torch.device(device)
        self._views = layers
        self.W_enc = LayerStack([lv.enc for lv in layers], self)
        self.W_dec = [MappedTensor(lv.dec, self) for lv in layers]
        self.W_skip = LayerStack([lv.skip for lv in layers], self) if cfg.skip else None
        small = {"b_enc": [lv.b_enc for lv in layers], "b_dec": [lv.b_dec for lv in layers]}
        if cfg.activation == "jumprelu":
            small["threshold"] = [lv.threshold for lv in layers]
        else:
            self.threshold = None
        for name, rows in small.items():
            self.register_buffer(name, torch.stack([r.to(torch.float32) for r in rows]).to(self._device, dtype))
        self.input_scale: torch.Tensor | None = None  # [L, d] folded norm weight, or None

    # --- dtype / device ----------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, device=None, *args, **kwargs):  # noqa: D102 - weights stay mapped; buffers move
        if device is not None and not isinstance(device, torch.dtype):
            self._device = torch.device(device)
        super().to(self._device)
        if self.input_scale is not None:
            self.input_scale = self.input_scale.to(self._device)
        return self

    @property
    def storage_dtype(self) -> torch.dtype:
        return self._views[0].dec.dtype

    # --- rows --------------------------------------------------------------------------------
    def encoder_rows(self, layer: int, features: torch.Tensor) -> torch.Tensor:
        """Encoder rows [n, d] of `features` at `layer` (input scale folded in)."""
        rows = self.W_enc.layers[layer][features]
        return rows if self.input_scale is None else rows * self.input_scale[layer]

    def decoder_rows(self, layer: int, features: torch.Tensor) -> torch.Tensor:
        """Decoder rows [n, n_out, d] of `features` read at `layer` (to layers layer .. layer+n_out-1);
        the pages read are dropped from RSS afterwards (the rows returned are a copy)."""
        rows = self.W_dec[layer][features]
        self._release(layer)
        return rows

    def _release(self, layer: int) -> None:
        """Drop the layer's mapped pages from RSS: safe, the mappings are never written (a later read
        faults the pages back in from the page cache)."""
        for p in self._views[layer].files:
            release(p)

    def skip_matrix(self, layer: int) -> torch.Tensor | None:
        """W_skip of `layer` [d, d] (y += x @ W_skip), input scale folded in; None without skip."""
        if self.W_skip is None:
            return None
        W = self.W_skip[layer]
        return W if self.input_scale is None else W * self.input_scale[layer][:, None]

    def _scaled(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        x = x.to(self._device, self._dtype)
        return x if self.input_scale is None else x * self.input_scale[layer]

    # --- forward pieces ----------------------------------------------------------------------
    @torch.no_grad()
    def encode_layer(self, x_pos_d: torch.Tensor, layer: int) -> torch.Tensor:
        """Pre-activations h [..., F] of one layer's features from that layer's input x [..., d]."""
        x = self._scaled(x_pos_d, layer)
        enc = self._views[layer].enc
        F = enc.shape[0]
        out = torch.empty(*x.shape[:-1], F, dtype=self._dtype, device=self._device)
        for f0 in range(0, F, ENC_CHUNK):
            W = enc[f0:f0 + ENC_CHUNK].to(self._device, self._dtype)
            out[..., f0:f0 + ENC_CHUNK] = x @ W.T
        self._release(layer)
        return out + self.b_enc[layer]

    def encode(self, x_layer_d: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.encode_layer(x_layer_d[..., l, :], l) for l in range(self.cfg.n_layers)], dim=-2)

    def activate(self, pre_layer_feat: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.activate_layer(pre_layer_feat[..., l, :], l)
                            for l in range(self.cfg.n_layers)], dim=-2)

    @torch.no_grad()
    def decode(self, acts_layer_feat: torch.Tensor, x_layer_d: torch.Tensor | None = None) -> torch.Tensor:
        """y_hat [..., L, d] from activations [..., L, F], reading decoder rows of active features only."""
        L, d = self.cfg.n_layers, self.cfg.d_model
        batch = acts_layer_feat.shape[:-2]
        acts = acts_layer_feat.reshape(-1, L, acts_layer_feat.shape[-1]).to(self._dtype)
        y = self.b_dec.expand(acts.shape[0], L, d).clone()
        for l_src in range(L):
            a_b_f = acts[:, l_src]
            active = a_b_f.ne(0).any(0).nonzero(as_tuple=True)[0]
            if len(active):
                W = self.decoder_rows(l_src, active)  # [n, n_out, d]
                y[:, l_src:l_src + W.shape[1]] += torch.einsum("bn,nkd->bkd", a_b_f[:, active], W)
        if self.W_skip is not None:
            if x_layer_d is None:
                raise ValueError("a transcoder with a skip term needs its inputs to decode")
            x = x_layer_d.reshape(-1, L, d)
            for l in range(L):
                y[:, l] += x[:, l].to(self._dtype) @ self.skip_matrix(l)
        return y.reshape(*batch, L, d)

    @torch.no_grad()
    def decode_layer(self, acts_by_layer, layer: int, x_pos_d: torch.Tensor | None = None) -> torch.Tensor:
        """y_hat_l [..., d] from the activations of layers 0..l (Transcoder.decode_layer's rule),
        reading only the decoder rows (to layer l) of features active somewhere in the batch."""
        y = self.b_dec[layer].expand(*acts_by_layer[layer].shape[:-1], -1).clone()
        for src in range(layer + 1):
            dec = self._views[src].dec
            if layer - src >= dec.shape[1]:
                continue
            a = acts_by_layer[src].to(self._dtype)
            active = a.reshape(-1, a.shape[-1]).ne(0).any(0).nonzero(as_tuple=True)[0]
            if len(active):
                W_n_d = dec[active.cpu(), layer - src].to(self._device, self._dtype)
                y = y + a[..., active] @ W_n_d
        skip_d_d = self.skip_matrix(layer)
        if skip_d_d is not None:
            if x_pos_d is None:
                raise ValueError("a transcoder with a skip term needs its inputs to decode")
            y = y + x_pos_d.to(self._device, self._dtype) @ skip_d_d
        return y

    def forward(self, x_layer_d: torch.Tensor):
        pre = self.encode(x_layer_d)
        acts = self.activate(pre)
        return self.decode(acts, x_layer_d), acts, pre

    # --- views used elsewhere ----------------------------------------------------------------
    def decoder_to_layer(self, source_layer: int, target_layer: int) -> torch.Tensor:
        """W_dec_{source -> target} [F, d] (zeros if the feature does not write there)."""
        k = target_layer - source_layer
        dec = self._views[source_layer].dec
        if k < 0 or k >= dec.shape[1]:
            return torch.zeros(dec.shape[0], dec.shape[2], dtype=self._dtype, device=self._device)
        return dec[:, k].to(self._device, self._dtype)

    def decoder_norms(self) -> torch.Tensor:
        """||W_dec_i|| [L, F], streamed over each layer's decoder in chunks."""
        out = []
        for lv in self._views:
            F = lv.dec.shape[0]
            norms = torch.cat([lv.dec[f0:f0 + ENC_CHUNK].float().pow(2).sum(dim=(1, 2)).sqrt()
                               for f0 in range(0, F, ENC_CHUNK)])
            out.append(norms)
        return torch.stack(out).to(self._device, self._dtype)

    def fold_input_norm(self, weight_layer_d: torch.Tensor, bias_layer_d: torch.Tensor | None = None) -> None:
        """Make the transcoder read n (a norm's output before its weight) instead of w * n + b, exactly:
        h = W_enc (w n + b) + b_enc = (W_enc w) n + (b_enc + W_enc b), skip likewise."""
        w = weight_layer_d.to(self._device, self._dtype)
        if bias_layer_d is not None:
            b = bias_layer_d.to(self._device, self._dtype)
            b_enc, b_dec = self.b_enc.clone(), self.b_dec.clone()
            for l in range(self.cfg.n_layers):
                b_enc[l] += self.encode_layer(b[l], l) - self.b_enc[l]  # W_enc_l b_l
                if self.W_skip is not None:
                    b_dec[l] += b[l] @ self.skip_matrix(l)
            self.b_enc.copy_(b_enc)
            self.b_dec.copy_(b_dec)
        self.input_scale = w if self.input_scale is None else self.input_scale * w

    def weight_digest(self) -> str:
        """sha256 of the first MiB (as float32) of W_enc (layer-stacked) and of each W_dec[l]."""
        return weight_digest([lv.enc for lv in self._views], [lv.dec for lv in self._views])
