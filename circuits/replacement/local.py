"""The local replacement model of one prompt (METHOD.md section 2).

Run the original model once and keep what the replacement model freezes: attention patterns,
every normalisation scale, the transcoder's active features and the error terms
e[l, c] = mlp_out[l, c] - y_hat[l, c]. Position 0 (BOS) carries no features and no error nodes, as
in circuit-tracer: its error e[l, 0] is a constant and, with a skip transcoder, its skip term
x[l, 0] W_skip stays live (so the BOS MLP output is e[l, 0] + b_dec + x[l, 0] W_skip; without a skip
term it is the constant true output).

Shapes: P positions, L layers, d residual width, H heads, F features per layer. The frozen per-layer
state is layer-major ([L, P, d], [L, P]) because the attribution reads it one layer at a time; the
capture it is built from is token-major like every other activation (circuits.replacement.hooks).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from circuits.errors import CircuitsError
from circuits.replacement.frozen_patterns import FrozenPatterns, rebuildable
from circuits.replacement.hooks import block_hook, capture_layers, check_transcoder_fits, transcoder_hooks


@dataclass
class ActiveFeatures:
    """The active features of a prompt, sorted by (layer, position, feature)."""

    layer: torch.Tensor  # [n] long
    position: torch.Tensor  # [n] long
    feature: torch.Tensor  # [n] long
    activation: torch.Tensor  # [n] float

    def __len__(self) -> int:
        return int(self.layer.shape[0])


@dataclass
class LocalReplacement:
    """Everything the frozen linear model of one prompt needs."""

    tokens: torch.Tensor  # [P]
    embed_pos_d: torch.Tensor  # [P, d] token embeddings W_E[token] (learned position embeddings are a constant)
    patterns: FrozenPatterns  # L x [H, P, P] attention patterns (query, key), kept causally
    ln1_scale_layer_pos: torch.Tensor  # [L, P] frozen scale of each block's attention-input norm
    ln2_scale_layer_pos: torch.Tensor  # [L, P] frozen scale of each block's MLP-input norm
    lnf_scale_pos: torch.Tensor  # [P] frozen scale of the final norm
    ln1_post_scale_layer_pos: torch.Tensor | None  # [L, P] post-attention norm (Gemma), else None
    # [L, P] post-MLP norm (Gemma) when the transcoder writes before it (mlp.hook_out), else None
    ln2_post_scale_layer_pos: torch.Tensor | None
    mlp_in_layer_pos_d: torch.Tensor  # [L, P, d] transcoder inputs (the input hook)
    mlp_out_layer_pos_d: torch.Tensor  # [L, P, d] true MLP outputs (at the output hook)
    recon_layer_pos_d: torch.Tensor  # [L, P, d] transcoder reconstruction (BOS: b_dec + skip, no features)
    error_layer_pos_d: torch.Tensor  # [L, P, d] mlp_out - recon (at BOS a constant, never a node)
    features: ActiveFeatures
    logits_vocab: torch.Tensor  # [vocab] the model's logits at the last position (soft-capped if it caps)
    node_logits_vocab: torch.Tensor  # [vocab] what logit nodes read: the logits before soft-capping
    resid_final_d: torch.Tensor  # [d] final residual stream at the last position (before ln_final)
    norm_scales: dict[str, torch.Tensor] = field(default_factory=dict)  # every `*.hook_scale`, frozen

    @property
    def n_pos(self) -> int:
        return int(self.tokens.shape[0])


def check_supported(model) -> None:
    """The frozen linear model handles sequential blocks with a norm before attention and MLP (and
    optionally after them, as Gemma-2/3); refuse the rest in one line."""
    from transformer_lens.components.transformer_block import POST_NORM_ARCHITECTURES

    cfg = model.cfg
    if getattr(cfg, "parallel_attn_mlp", False):
        raise CircuitsError("models with parallel attention and MLP are not supported for tracing yet")
    if cfg.original_architecture in POST_NORM_ARCHITECTURES:
        raise CircuitsError(f"{cfg.original_architecture} (norms only after attention and MLP) is not "
                            "supported for tracing yet")
    if cfg.attn_only:
        raise CircuitsError("attention-only models have no MLPs to replace")
    if getattr(cfg, "use_split_qkv_input", False) or getattr(cfg, "use_attn_in", False):
        raise CircuitsError("models with split attention inputs are not supported for tracing")


def _frozen_hook(tensor: torch.Tensor):
    """A forward hook that replaces its activation by `tensor` (reshaped and cast to it)."""
    def hook(value, hook):  # noqa: ARG001
        return tensor.reshape(value.shape).to(value.dtype)
    return hook


def freeze_hooks(model, rep: LocalReplacement) -> list:
    """Hooks holding every attention pattern and every norm scale (ln1, ln2, ln_final, post-norms,
    q/k norms) at the prompt's values."""
    hooks = [(block_hook(l, "attn.hook_pattern"), _frozen_hook(rep.patterns[l][None]))
             for l in range(model.cfg.n_layers)]
    return hooks + [(name, _frozen_hook(scale)) for name, scale in rep.norm_scales.items()]


def _is_norm_scale(name: str) -> bool:
    return name.endswith("hook_scale")


@contextmanager
def logits_before_soft_cap(model):
    """Run `model` without its final-logit soft-capping (Gemma-2: 30 tanh(x / 30)), restoring it after.

    Logit nodes read the logits before the cap: those are linear in the frozen residual stream."""
    cap = getattr(model.cfg, "output_logits_soft_cap", -1.0)
    model.cfg.output_logits_soft_cap = -1.0
    try:
        yield
    finally:
        model.cfg.output_logits_soft_cap = cap


def soft_cap(logits: torch.Tensor, model) -> torch.Tensor:
    """The model's final soft-capping applied to logits read before it (identity without a cap)."""
    from transformer_lens.utilities.activation_functions import apply_softcap

    return apply_softcap(logits, getattr(model.cfg, "output_logits_soft_cap", -1.0))


def _layer_scales(cache: dict, name: str, n_layers: int) -> torch.Tensor | None:
    """A per-block norm's frozen scales [L, P] (None if the model has no such norm)."""
    if block_hook(0, name) not in cache:
        return None
    return torch.stack([cache[block_hook(l, name)][0, :, 0] for l in range(n_layers)]).float()


def writes_before_post_mlp_norm(model, transcoder) -> bool:
    """Whether the transcoder's output passes the model's post-MLP norm (mlp.hook_out on Gemma)."""
    from circuits.replacement.hooks import has_post_mlp_norm

    return transcoder.cfg.output_hook == "mlp.hook_out" and has_post_mlp_norm(model)


def _scale_or_ones(cache: dict, name: str, n_pos: int, device) -> torch.Tensor:
    """A norm's frozen scale [P] (ones where the model has no norm there)."""
    if name in cache:
        return cache[name][0, :, 0]
    return torch.ones(n_pos, device=device)


def _with_norm_weight(model, normalized: torch.Tensor) -> torch.Tensor:
    """ln_final's output from its hook_normalized (taken before its weight and bias, and before
    the cast back to the model's dtype), as TransformerLens computes it."""
    norm = getattr(model, "ln_final", None)
    if norm is None:
        return normalized
    normalized = normalized.to(model.cfg.dtype)
    w, b = getattr(norm, "w", None), getattr(norm, "b", None)
    out = normalized * w if w is not None else normalized
    return out + b if b is not None else out


@torch.no_grad()
def build_local_replacement(model, transcoder, tokens_pos: torch.Tensor, rebuild_from: int | None = None
                            ) -> LocalReplacement:
    """Run the model on `tokens_pos` [P] and freeze what the local replacement model needs.
    `rebuild_from` (long prompts): layers from this one up keep their q and k and rebuild the
    attention pattern from them when it is read, instead of keeping it (circuits.replacement.
    frozen_patterns; models whose scores are not rebuildable keep every pattern)."""
    check_supported(model)
    check_transcoder_fits(model, transcoder, "the transcoders")
    L = model.cfg.n_layers
    tokens_pos = tokens_pos.to(model.cfg.device)
    extra = {"hook_embed", "ln_final.hook_scale", block_hook(L - 1, "hook_resid_post")}
    for l in range(L):
        extra |= {block_hook(l, "ln1.hook_scale"), block_hook(l, "ln2.hook_scale")}
    pattern_hooks = [block_hook(l, "attn.hook_pattern") for l in range(L)]
    missing = [n for n in sorted(extra) + pattern_hooks if n not in model.hook_dict and "hook_scale" not in n]
    if missing:
        raise CircuitsError(f"the model has no hook {missing[0]}: its architecture is not supported for tracing")
    extra |= {n for n in model.hook_dict if _is_norm_scale(n)}
    if rebuild_from is None or not rebuildable(model):
        rebuild_from = L
    patterns = FrozenPatterns(L, int(tokens_pos.shape[0]), attention_modules=[b.attn for b in model.blocks])
    keep_hooks = [(name, patterns.hook(l)) for l, name in enumerate(pattern_hooks) if l < rebuild_from]  # causally
    keep_hooks += [h for l in range(rebuild_from, L) for h in patterns.qk_hooks(model, l)]
    final = "ln_final.hook_normalized" if "ln_final.hook_normalized" in model.hook_dict else block_hook(L - 1, "hook_resid_post")
    extra.add(final)
    with logits_before_soft_cap(model):  # logits at the last position only: [P, vocab] is GBs at long prompts
        cap = capture_layers(model, tokens_pos[None], transcoder.cfg.input_hook, transcoder.cfg.output_hook, extra,
                             logits=False, fwd_hooks=keep_hooks)
        cache = cap.extra
        node_logits = model.unembed(_with_norm_weight(model, cache[final][:, -1:]))  # [1, 1, vocab]
    logits = soft_cap(node_logits, model)
    P = tokens_pos.shape[0]
    dev = logits.device
    mlp_in = cap.x_b_t_layer_d[0].transpose(0, 1).float().contiguous()   # [L, P, d]
    mlp_out = cap.y_b_t_layer_d[0].transpose(0, 1).float().contiguous()  # [L, P, d]
    tc_dtype = transcoder.dtype
    acts_by_layer = []
    for l in range(L):
        acts_pos_feat = transcoder.layer_features(mlp_in[l].to(tc_dtype), l)
        acts_pos_feat[0] = 0  # BOS carries no features
        acts_by_layer.append(acts_pos_feat)
    recon = transcoder.decode(torch.stack(acts_by_layer, dim=1), mlp_in.transpose(0, 1).to(tc_dtype))
    recon = recon.transpose(0, 1).float().contiguous()  # [L, P, d]
    layer_idx, pos_idx, feat_idx, values = [], [], [], []
    for l, acts_pos_feat in enumerate(acts_by_layer):
        pos, feat = acts_pos_feat.nonzero(as_tuple=True)
        layer_idx.append(torch.full_like(pos, l))
        pos_idx.append(pos)
        feat_idx.append(feat)
        values.append(acts_pos_feat[pos, feat].float())
    features = ActiveFeatures(torch.cat(layer_idx), torch.cat(pos_idx), torch.cat(feat_idx), torch.cat(values))
    return LocalReplacement(
        tokens=tokens_pos,
        embed_pos_d=cache["hook_embed"][0].float(),
        patterns=patterns,
        ln1_scale_layer_pos=torch.stack([_scale_or_ones(cache, block_hook(l, "ln1.hook_scale"), P, dev)
                                         for l in range(L)]).float(),
        ln2_scale_layer_pos=torch.stack([_scale_or_ones(cache, block_hook(l, "ln2.hook_scale"), P, dev)
                                         for l in range(L)]).float(),
        lnf_scale_pos=_scale_or_ones(cache, "ln_final.hook_scale", P, dev).float(),
        ln1_post_scale_layer_pos=_layer_scales(cache, "ln1_post.hook_scale", L),
        ln2_post_scale_layer_pos=_layer_scales(cache, "ln2_post.hook_scale", L)
        if writes_before_post_mlp_norm(model, transcoder) else None,
        mlp_in_layer_pos_d=mlp_in,
        mlp_out_layer_pos_d=mlp_out,
        recon_layer_pos_d=recon,
        error_layer_pos_d=mlp_out - recon,
        features=features,
        logits_vocab=logits[0, -1].float(),
        node_logits_vocab=node_logits[0, -1].float(),
        resid_final_d=cache[block_hook(L - 1, "hook_resid_post")][0, -1].float(),
        norm_scales={name: value for name, value in cache.items() if _is_norm_scale(name)},
    )


def replacement_hooks(model, transcoder, rep: LocalReplacement | None = None, freeze: bool = True) -> list:
    """Forward hooks that replace every MLP output by the transcoder's, all layers at once: layer l's
    output becomes y_hat_l of the features read from the live run's own inputs at layers <= l.

    Without `rep` (the global replacement model, scored by fidelity) position 0 keeps its true MLP
    output. With `rep` (the local replacement model of its prompt) the frozen error term is added
    and position 0 has no features (its output is its error constant + b_dec + live skip term, the
    module doc); with `freeze` the attention patterns and norm scales are also held at their clean
    values. Works on any batch shape [..., P, d].
    """
    live_x: dict[int, torch.Tensor] = {}
    live_acts: dict[int, torch.Tensor] = {}
    dtype = transcoder.dtype

    def read_input(layer):
        def hook(x, hook):  # noqa: ARG001 - TransformerLens hook signature
            live_x[layer] = x.to(dtype)
            live_acts[layer] = transcoder.layer_features(live_x[layer], layer)
            if rep is not None:
                live_acts[layer][..., 0, :] = 0  # BOS carries no features
        return hook

    def write_output(layer):
        def hook(y, hook):  # noqa: ARG001
            y_hat = transcoder.decode_layer(live_acts, layer, live_x[layer])
            if rep is None:
                y_hat[..., 0, :] = y[..., 0, :]
            else:
                y_hat = y_hat + rep.error_layer_pos_d[layer]
            return y_hat.to(y.dtype)
        return hook

    hooks = []
    for l in range(model.cfg.n_layers):
        inp, out = transcoder_hooks(transcoder, l)
        hooks += [(inp, read_input(l)), (out, write_output(l))]
    return hooks + (freeze_hooks(model, rep) if rep is not None and freeze else [])
