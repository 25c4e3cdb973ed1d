"""Interventions on transcoder features in the real model (constrained patching, METHOD.md section 5).

One intervention sets a feature's activation a at (layer l_s, position c) to a new value a' (a value,
or a multiple of a). Its decoder change delta_a * W_dec_{l_s -> l} is added into the MLP output
(`blocks.{l}.hook_mlp_out`) at position c of every layer l in the patched range [A, B] the feature
writes to. The real model then runs forward; attention patterns are frozen at their clean values
(default) and every LayerNorm recomputes. In the default mode the MLPs keep running (so they react
to the changed residual); with `clamp_mlps=True` the MLP outputs of layers A..B are held at their
clean values plus the decoder change. Layers after B always run freely. docs/interventions.md
gives the reasoning and the exact semantics.

    acts = feature_activations(model, transcoder, tokens)              # [pos, L, F]
    result = intervene(rm, "calc: 36+59=", [Intervention(3, -1, 120, multiplier=0.0)])
    result.top_before, result.top_after, result.kl
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

import torch

from circuits.errors import CircuitsError
from circuits.replacement.hooks import block_hook, capture_layers, check_transcoder_fits

Pos = int | tuple[int, int]  # a position (negative: from the end) or an inclusive range (a, b)

if TYPE_CHECKING:
    from circuits.replacement.model import ReplacementModel


FINAL_SCALE = "ln_final.hook_scale"


@dataclass(frozen=True)
class Intervention:
    """Set feature `feature` of layer `layer` at `pos` to `value`, or scale it by `multiplier`."""

    layer: int
    pos: Pos
    feature: int
    value: float | None = None
    multiplier: float | None = None

    def __post_init__(self):
        if (self.value is None) == (self.multiplier is None):
            raise CircuitsError(f"intervention on {self.feature_id}: give exactly one of value / multiplier")
        number = self.value if self.value is not None else self.multiplier
        if not math.isfinite(number):
            raise CircuitsError(f"intervention on {self.feature_id}: {number} is not a finite number")

    @property
    def feature_id(self) -> str:
        pos = f"{self.pos[0]}..{self.pos[1]}" if isinstance(self.pos, tuple) else str(self.pos)
        return f"{self.layer}:{pos}:{self.feature}"


@dataclass(frozen=True)
class AppliedChange:
    """One intervention at one absolute position: the activation before and after."""

    layer: int
    pos: int
    feature: int
    before: float
    after: float

    @property
    def feature_id(self) -> str:
        return f"{self.layer}:{self.pos}:{self.feature}"


@dataclass
class CleanRun:
    """What an intervention needs from the unpatched forward pass of one prompt."""

    tokens: torch.Tensor                # [pos]
    logits_pos_vocab: torch.Tensor      # [pos, d_vocab]
    acts_pos_layer_feat: torch.Tensor   # [pos, L, F]  transcoder activations
    mlp_out_pos_layer_d: torch.Tensor   # [pos, L, d]  true MLP outputs
    patterns: list[torch.Tensor]        # per layer [head, q, k]
    final_scale_pos: torch.Tensor | None = None  # [pos] the final norm's scale (None: the model has none)


@dataclass
class InterventionResult:
    logits_before: torch.Tensor         # [pos, d_vocab]
    logits_after: torch.Tensor          # [pos, d_vocab]
    top_before: list[dict]              # next-token {token, id, prob, logit} at the last position
    top_after: list[dict]
    kl: float                           # KL(before || after) of the last position's distribution, nats
    changes: list[AppliedChange]
    layers: tuple[int, int]             # patched range [A, B], inclusive
    acts_after: torch.Tensor            # [pos, L, F] transcoder read-out of the patched run's MLP inputs
    generated_before: list[int] = field(default_factory=list)
    generated_after: list[int] = field(default_factory=list)

    def to_json(self, tokenizer=None) -> dict:
        out = {"layers": list(self.layers), "kl": self.kl,
               "interventions": [{"id": c.feature_id, "layer": c.layer, "pos": c.pos, "feature": c.feature,
                                  "before": c.before, "after": c.after} for c in self.changes],
               "top_before": self.top_before, "top_after": self.top_after}
        if self.generated_after or self.generated_before:
            out["generated_before"] = _decode(tokenizer, self.generated_before)
            out["generated_after"] = _decode(tokenizer, self.generated_after)
        return out


# --- reading features ------------------------------------------------------------------------
def encode_inputs(transcoder, x_layer_d: torch.Tensor) -> torch.Tensor:
    """Feature activations [..., L, F] from the transcoder's inputs [..., L, d] (e.g. [pos, L, d])."""
    return transcoder.activate(transcoder.encode(x_layer_d.to(transcoder.W_enc.dtype)))


@torch.no_grad()
def clean_run(model, transcoder, tokens: torch.Tensor) -> CleanRun:
    """Run the model on `tokens` [pos] and record logits, features, MLP outputs and attention."""
    check_transcoder_fits(model, transcoder)
    L, tcfg = model.cfg.n_layers, transcoder.cfg
    patterns = [block_hook(l, "attn.hook_pattern") for l in range(L)]
    cap = capture_layers(model, tokens[None], tcfg.input_hook, tcfg.output_hook, [*patterns, FINAL_SCALE])
    final_scale = cap.extra.get(FINAL_SCALE)
    return CleanRun(
        tokens=tokens, logits_pos_vocab=cap.logits[0].float(),
        acts_pos_layer_feat=encode_inputs(transcoder, cap.x_b_t_layer_d[0]),
        mlp_out_pos_layer_d=cap.y_b_t_layer_d[0],
        patterns=[cap.extra[name][0] for name in patterns],
        final_scale_pos=final_scale[0, :, 0] if final_scale is not None else None)


def feature_activations(model, transcoder, tokens: torch.Tensor) -> torch.Tensor:
    """The transcoder's feature activations on a prompt: acts [pos, L, F]."""
    return clean_run(model, transcoder, tokens).acts_pos_layer_feat


def injections_from(model, transcoder, source_tokens: torch.Tensor, features: Iterable[tuple[int, int, int]],
                    at_pos: int | None = None, scale: float = 1.0) -> list[Intervention]:
    """Value interventions that copy features (layer, pos, feature) from another prompt.

    Each feature's activation is read at `pos` of `source_tokens`; the intervention sets it at
    `at_pos` of the target prompt (default: the same `pos`, so -1 maps last token to last token).
    """
    acts = feature_activations(model, transcoder, source_tokens)
    out = []
    for layer, pos, feature in features:
        _check_feature(Intervention(layer, pos, feature, value=0.0), acts.shape)
        value = float(acts[pos, layer, feature]) * scale
        out.append(Intervention(layer, pos if at_pos is None else at_pos, feature, value=value))
    return out


# --- resolving and writing the changes --------------------------------------------------------
def _check_feature(iv: Intervention, shape) -> list[int]:
    """Absolute positions of `iv` after bounds checks (one clear error each); shape (pos, L, F)."""
    n_pos, L, F = shape
    if not 0 <= iv.layer < L:
        raise CircuitsError(f"feature {iv.feature_id}: layer {iv.layer} does not exist (layers 0-{L - 1})")
    if not 0 <= iv.feature < F:
        raise CircuitsError(f"feature {iv.feature_id}: feature {iv.feature} does not exist "
                            f"(layer {iv.layer} has features 0-{F - 1})")
    ends = iv.pos if isinstance(iv.pos, tuple) else (iv.pos, iv.pos)
    lo, hi = (p + n_pos if p < 0 else p for p in ends)
    if not (0 <= lo < n_pos and 0 <= hi < n_pos):
        raise CircuitsError(f"feature {iv.feature_id}: position out of range (the prompt has positions "
                            f"0-{n_pos - 1}, or -{n_pos}..-1 from the end)")
    if lo > hi:
        raise CircuitsError(f"feature {iv.feature_id}: empty position range {lo}..{hi}")
    if lo == 0:
        raise CircuitsError(f"feature {iv.feature_id}: position 0 is the BOS token, which carries no features")
    return list(range(lo, hi + 1))


def resolve_changes(interventions: Iterable[Intervention], acts_pos_layer_feat: torch.Tensor) -> list[AppliedChange]:
    """Absolute positions and before/after activations; refuses bad ids and multiples of inactive features."""
    changes: dict[tuple[int, int, int], AppliedChange] = {}
    for iv in interventions:
        for pos in _check_feature(iv, acts_pos_layer_feat.shape):
            before = float(acts_pos_layer_feat[pos, iv.layer, iv.feature])
            key = (iv.layer, pos, iv.feature)
            if key in changes:
                raise CircuitsError(f"feature {iv.layer}:{pos}:{iv.feature} is set twice")
            if iv.multiplier is not None and before == 0.0:
                raise CircuitsError(
                    f"feature {iv.layer}:{pos}:{iv.feature} is not active at position {pos}, so a multiple of "
                    f"it changes nothing; set a value instead (e.g. {iv.layer}:{pos}:{iv.feature}=2.0)")
            after = before * iv.multiplier if iv.multiplier is not None else float(iv.value)
            if not math.isfinite(after):
                raise CircuitsError(f"feature {iv.layer}:{pos}:{iv.feature}: {before} x {iv.multiplier} is not a "
                                    "finite number; use a smaller multiplier")
            changes[key] = AppliedChange(iv.layer, pos, iv.feature, before, after)
    if not changes:
        raise CircuitsError("no interventions given")
    return list(changes.values())


def check_layer_range(layers: tuple[int, int | None] | None, changes: list[AppliedChange], transcoder) -> tuple[int, int]:
    """The patched range [A, B] (default: first intervened layer to the last layer), checked."""
    L = transcoder.cfg.n_layers
    if layers is None:
        layers = (min(c.layer for c in changes), L - 1)
    start, stop = layers[0], L - 1 if layers[1] is None else layers[1]
    if not (0 <= start <= stop < L):
        raise CircuitsError(f"layer range {start}:{stop} is outside the model (layers 0-{L - 1}, A <= B)")
    for c in changes:
        if not any(0 <= l - c.layer < transcoder.cfg.n_outputs(c.layer) for l in range(start, stop + 1)):
            last = c.layer + transcoder.cfg.n_outputs(c.layer) - 1
            raise CircuitsError(f"feature {c.feature_id} writes to layers {c.layer}-{last}, none of them in "
                                f"the patched range {start}:{stop}")
    return start, stop


@torch.no_grad()
def decoder_deltas(transcoder, changes: list[AppliedChange], layers: tuple[int, int], n_pos: int) -> torch.Tensor:
    """The change written into each MLP output: [pos, L, d], sum of delta_a * W_dec_{l_s -> l} for l in [A, B]."""
    L, d = transcoder.cfg.n_layers, transcoder.cfg.d_model
    deltas_pos_layer_d = torch.zeros(n_pos, L, d, dtype=transcoder.W_enc.dtype, device=transcoder.W_enc.device)
    for c in changes:
        for l in range(max(layers[0], c.layer), layers[1] + 1):
            if l - c.layer < transcoder.cfg.n_outputs(c.layer):
                deltas_pos_layer_d[c.pos, l] += (c.after - c.before) * transcoder.W_dec[c.layer][c.feature, l - c.layer]
    return deltas_pos_layer_d


def patch_hooks(model, transcoder, clean: CleanRun, deltas_pos_layer_d: torch.Tensor, layers: tuple[int, int],
                freeze_attention: bool = True, clamp_mlps: bool = False, freeze_final_norm: bool = False) -> list:
    """TransformerLens forward hooks for the patched run (prompt positions only; longer inputs allowed).
    With `freeze_final_norm` the final norm's scale is held at its clean value (the read-out of a
    graph's logit node, METHOD.md section 3)."""
    n_pos = clean.tokens.shape[0]
    out_hook = transcoder.cfg.output_hook

    def mlp_hook(layer):
        def hook(mlp_out, hook):
            delta = deltas_pos_layer_d[:, layer].to(mlp_out.dtype)
            base = clean.mlp_out_pos_layer_d[:, layer] if clamp_mlps else mlp_out[:, :n_pos]
            mlp_out = mlp_out.clone()
            mlp_out[:, :n_pos] = base + delta
            return mlp_out
        return hook

    def pattern_hook(layer):
        def hook(pattern, hook):
            pattern = pattern.clone()
            pattern[:, :, :n_pos, :n_pos] = clean.patterns[layer]
            return pattern
        return hook

    patched = range(layers[0], layers[1] + 1)
    hooks = [(block_hook(l, out_hook), mlp_hook(l)) for l in patched
             if clamp_mlps or bool(deltas_pos_layer_d[:, l].any())]
    if freeze_attention:
        hooks += [(block_hook(l, "attn.hook_pattern"), pattern_hook(l)) for l in range(model.cfg.n_layers)]
    if freeze_final_norm and clean.final_scale_pos is not None:
        def final_scale_hook(scale, hook):  # noqa: ARG001
            scale = scale.clone()
            scale[:, :n_pos, 0] = clean.final_scale_pos.to(scale.dtype)
            return scale
        hooks.append((FINAL_SCALE, final_scale_hook))
    return hooks


# --- the experiment ---------------------------------------------------------------------------
def _decode(tokenizer, ids: list[int]) -> str | list[int]:
    return tokenizer.decode(ids) if tokenizer is not None else ids


def top_tokens(model, logits_vocab: torch.Tensor, k: int = 10) -> list[dict]:
    """The k most likely next tokens: [{token, id, prob, logit}]."""
    probs = torch.softmax(logits_vocab.float(), -1)
    values, ids = probs.topk(min(k, probs.shape[0]))
    tok = model.tokenizer
    return [{"token": tok.decode([int(i)]) if tok is not None else str(int(i)), "id": int(i),
             "prob": float(p), "logit": float(logits_vocab[i])} for p, i in zip(values, ids)]


def kl_divergence(logits_p: torch.Tensor, logits_q: torch.Tensor) -> float:
    """KL(p || q) in nats between two next-token distributions given as logits [vocab]."""
    logp, logq = torch.log_softmax(logits_p.double(), -1), torch.log_softmax(logits_q.double(), -1)
    return float((logp.exp() * (logp - logq)).sum())


@torch.no_grad()
def greedy_generate(model, tokens: torch.Tensor, n_new: int, hooks: list | None = None) -> list[int]:
    """Greedy continuation (no KV cache: each step reruns the prefix with `hooks`)."""
    seq, new = tokens.clone(), []
    for _ in range(n_new):
        if seq.shape[0] >= model.cfg.n_ctx:
            break
        with model.hooks(fwd_hooks=hooks or []):
            nxt = model(seq[None])[0, -1].argmax()
        new.append(int(nxt))
        seq = torch.cat([seq, nxt[None].to(seq.device)])
    return new


@torch.no_grad()
def intervene(rm: ReplacementModel, prompt: str | torch.Tensor, interventions: Iterable[Intervention], *,
              layers: tuple[int, int | None] | None = None, freeze_attention: bool = True,
              clamp_mlps: bool = False, top: int = 10, generate: int = 0,
              freeze_final_norm: bool = False) -> InterventionResult:
    """Constrained patching of `interventions` on `prompt` (text, or token ids [pos]) in the
    replacement model's real model; see the module docstring."""
    tokens = rm.tokens(prompt) if isinstance(prompt, str) else prompt
    return intervene_tokens(rm.model, rm.transcoder, tokens, interventions, layers=layers,
                            freeze_attention=freeze_attention, clamp_mlps=clamp_mlps, top=top, generate=generate,
                            freeze_final_norm=freeze_final_norm)


def intervene_tokens(model, transcoder, tokens: torch.Tensor, interventions: Iterable[Intervention],
                     layers: tuple[int, int | None] | None = None, freeze_attention: bool = True,
                     clamp_mlps: bool = False, top: int = 10, generate: int = 0,
                     freeze_final_norm: bool = False) -> InterventionResult:
    """`intervene` on a model and transcoder pair (no ReplacementModel): tokens [pos]."""
    clean = clean_run(model, transcoder, tokens)
    changes = resolve_changes(interventions, clean.acts_pos_layer_feat)
    span = check_layer_range(layers, changes, transcoder)
    deltas = decoder_deltas(transcoder, changes, span, tokens.shape[0])
    hooks = patch_hooks(model, transcoder, clean, deltas, span, freeze_attention, clamp_mlps, freeze_final_norm)
    patched = capture_layers(model, tokens[None], transcoder.cfg.input_hook, fwd_hooks=hooks)
    logits_after = patched.logits[0].float()
    if not torch.isfinite(logits_after).all():
        raise CircuitsError("the intervention drove the model's logits to NaN or infinity: the values are "
                            "too large for the model's numbers; use smaller values or multipliers")
    acts_after = encode_inputs(transcoder, patched.x_b_t_layer_d[0])
    before, after = clean.logits_pos_vocab, logits_after
    return InterventionResult(
        logits_before=before, logits_after=after,
        top_before=top_tokens(model, before[-1], top), top_after=top_tokens(model, after[-1], top),
        kl=kl_divergence(before[-1], after[-1]), changes=changes, layers=span, acts_after=acts_after,
        generated_before=greedy_generate(model, tokens, generate) if generate else [],
        generated_after=greedy_generate(model, tokens, generate, hooks) if generate else [])


# --- parsing the CLI's syntax (also the ids `circuits trace` prints) ---------------------------
_INT = r"-?\d+"
_FEATURE_ID = re.compile(rf"^\s*(\d+):({_INT}(?:\.\.{_INT})?):(\d+)\s*$")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_SET_RHS = re.compile(rf"^\s*(x|\*)?\s*({_NUMBER})\s*$")
_SET_HELP = "expected LAYER:POS:FEATURE=VALUE or LAYER:POS:FEATURE=xMULT, e.g. 3:-1:120=x0 or 2:4..6:17=5.5"


def parse_feature_id(text: str) -> tuple[int, Pos, int]:
    """'L:POS:F' -> (layer, pos, feature); POS is an int (negative from the end) or 'a..b' (inclusive)."""
    m = _FEATURE_ID.match(text)
    if not m:
        raise CircuitsError(f"malformed feature id '{text}': expected LAYER:POS:FEATURE, e.g. 3:-1:120 or 3:4..6:120")
    pos_text = m.group(2)
    if ".." in pos_text:
        a, b = pos_text.split("..")
        pos: Pos = (int(a), int(b))
    else:
        pos = int(pos_text)
    return int(m.group(1)), pos, int(m.group(3))


def parse_set(text: str) -> Intervention:
    """'L:POS:F=VALUE' (set the activation) or 'L:POS:F=xMULT' (scale it: x0 ablates, x-1 inverts)."""
    if text.count("=") != 1:
        raise CircuitsError(f"malformed --set '{text}': {_SET_HELP}")
    lhs, rhs = text.split("=")
    if not _FEATURE_ID.match(lhs):
        raise CircuitsError(f"malformed --set '{text}': {_SET_HELP}")
    m = _SET_RHS.match(rhs)
    if not m:
        raise CircuitsError(f"malformed --set '{text}': '{rhs}' is not a number or xMULT; {_SET_HELP}")
    layer, pos, feature = parse_feature_id(lhs)
    number = float(m.group(2))
    if not math.isfinite(number):
        raise CircuitsError(f"--set '{text}': {m.group(2)} is not a finite number (too large for a float)")
    if m.group(1):
        return Intervention(layer, pos, feature, multiplier=number)
    return Intervention(layer, pos, feature, value=number)


def parse_layer_range(text: str) -> tuple[int, int | None]:
    """'A:B' (inclusive), 'A' (one layer) or 'A:' (A to the last layer) -> (A, B or None)."""
    m = re.match(r"^\s*(\d+)\s*(?:(:)\s*(\d+)?)?\s*$", text or "")
    if not m:
        raise CircuitsError(f"malformed layer range '{text}': expected A:B (inclusive), A, or A: (to the last layer)")
    start = int(m.group(1))
    if m.group(2) is None:
        return start, start
    return start, int(m.group(3)) if m.group(3) is not None else None
