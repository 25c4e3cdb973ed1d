"""A tiny random HookedTransformer and token stream for transcoder tests (runs in milliseconds).

`tiny_model(act_fn="relu")` has MLPs an exact per-layer transcoder can reproduce (see
`exact_transcoder`): features = MLP hidden units, W_enc = W_in^T, b_enc = b_in, W_dec = W_out,
b_dec = b_out. That gives fidelity tests a replacement model with a known answer.
"""

from __future__ import annotations

import warnings

import torch

from transcoders.config import TranscoderConfig
from transcoders.transcoder import Transcoder

VOCAB = 48


def tiny_model(n_layers: int = 2, d_model: int = 32, d_mlp: int = 64, act_fn: str = "gelu", seed: int = 0):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=n_layers, d_model=d_model, n_heads=2, d_head=d_model // 2,
                                  d_mlp=d_mlp, n_ctx=64, d_vocab=VOCAB, act_fn=act_fn,
                                  normalization_type="LN", seed=seed, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HookedTransformer(cfg)
    gen = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():  # non-trivial biases, so a dropped b_in / b_out is caught
        for block in model.blocks:
            block.mlp.b_in.copy_(0.3 * torch.randn(d_mlp, generator=gen))
            block.mlp.b_out.copy_(0.3 * torch.randn(d_model, generator=gen))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def token_sequences(n: int, length: int = 16, seed: int = 0, bos: int = 0) -> list[list[int]]:
    """Random sequences starting with `bos`, with a little structure (repeats) so they are not pure noise."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        body = torch.randint(1, VOCAB, (length - 1,), generator=gen)
        out.append([bos] + body.tolist())
    return out


def exact_transcoder(model, kind: str = "plt") -> Transcoder:
    """A ReLU transcoder equal to the model's (ReLU) MLPs; CLT form has zero cross-layer decoders."""
    L, d, F = model.cfg.n_layers, model.cfg.d_model, model.cfg.d_mlp
    tc = Transcoder(TranscoderConfig(kind=kind, n_layers=L, d_model=d, n_features=F, activation="relu"))
    with torch.no_grad():
        for l, block in enumerate(model.blocks):
            tc.W_enc[l].copy_(block.mlp.W_in.T)
            tc.b_enc[l].copy_(block.mlp.b_in)
            tc.W_dec[l].zero_()
            tc.W_dec[l][:, 0].copy_(block.mlp.W_out)
            tc.b_dec[l].copy_(block.mlp.b_out)
    return tc


def random_transcoder(kind: str = "clt", n_layers: int = 3, d_model: int = 8, n_features: int = 6,
                      activation: str = "jumprelu", skip: bool = False, seed: int = 0, **kw) -> Transcoder:
    torch.manual_seed(seed)
    tc = Transcoder(TranscoderConfig(kind=kind, n_layers=n_layers, d_model=d_model, n_features=n_features,
                                     activation=activation, skip=skip, **kw))
    with torch.no_grad():
        for p in tc.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return tc


def train_tiny(model, seqs, out, base: dict, **kw):
    """train_transcoder on `seqs` with TrainConfig.from_flat(base) updated by the TrainConfig fields
    in kw (the other kw go to train_transcoder). `model`: a HookedTransformer or a LayerReader."""
    from transcoders.config import TranscoderArchitecture
    from transcoders.train_config import TrainConfig
    from transcoders.trainer import train_transcoder

    names = {**TrainConfig.model_fields, **TranscoderArchitecture.model_fields}
    opts = {k: kw.pop(k) for k in list(kw) if k in names}
    read_layers = model if hasattr(model, "n_layers") else TinyLayers(model)
    return train_transcoder(read_layers, seqs, TrainConfig.from_flat({**base, **opts}), out, model_name="tiny",
                            progress=False, **kw)


class TinyLayers:
    """A HookedTransformer as the trainer reads it (transcoders.activation_source.LayerReader), for
    the transcoder package's own tests, which never import `circuits` (the engine's reader is
    circuits.training.train.ModelLayers; tests/circuits/test_capture.py checks the two agree)."""

    def __init__(self, model):
        self.model = model
        self.n_layers, self.d_model = model.cfg.n_layers, model.cfg.d_model

    @torch.no_grad()
    def __call__(self, tokens_b_t: torch.Tensor, input_hook: str, output_hook: str):
        kept: dict[str, torch.Tensor] = {}

        def keep(value, hook):
            kept[hook.name] = value
            return value

        names = [f"blocks.{l}.{h}" for h in (input_hook, output_hook) for l in range(self.n_layers)]
        self.model.run_with_hooks(tokens_b_t, return_type=None, fwd_hooks=[(n, keep) for n in names])
        stack = lambda hook: torch.stack([kept[f"blocks.{l}.{hook}"] for l in range(self.n_layers)], dim=2)  # noqa: E731
        return stack(input_hook), stack(output_hook)
