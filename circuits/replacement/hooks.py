"""Where a transcoder meets a model: TransformerLens hook names, the fit check, and the one capture
of every layer's transcoder input (x) and MLP output (y). Every reading of a model's activations
goes through `capture_layers` (the trainer's too: circuits.training.train.ModelLayers).

Layout: per-layer activations are token-major, the layer axis just before the width: [B, T, L, d]
for a batch, [P, L, d] for one prompt, [N, L, d] for tokens in rows (as transcoders' Transcoder,
trainer and activation cache take them). The local replacement model's frozen state is the one
exception (circuits.replacement.local: [L, P, d], read one layer at a time by the attribution).

    block_hook(3, "hook_mlp_out")                      # 'blocks.3.hook_mlp_out'
    check_transcoder_fits(model, transcoder)           # one-line CircuitsError if it does not
    cap = capture_layers(model, tokens_b_t, "ln2.hook_normalized", "hook_mlp_out")
    cap.x_b_t_layer_d, cap.y_b_t_layer_d, cap.logits   # [B, T, L, d], [B, T, L, d], [B, T, vocab]

Hook names of published transcoders, mapped onto the hooks our replacement model reads:

  hook_resid_mid, ln2.hook_normalized, hook_mlp_out   used as they are
  mlp.hook_in   circuit-tracer's MLP input: the ln2 output AFTER its weight (and bias), w * n + b with
                n = ln2.hook_normalized. The weight and bias are folded into the transcoder
                (W_enc diag(w), b_enc + W_enc b; the skip term likewise), which then reads n exactly.
                A model without ln2 feeds resid_mid to the MLP: then it is hook_resid_mid.
  mlp.hook_out  circuit-tracer's MLP output: the MLP module's own output. Models without a norm after
                the MLP add it to the residual as is: then it is hook_mlp_out. On Gemma-2/3 the
                post-feedforward norm comes after it: the model gets a `blocks.{l}.mlp.hook_out`
                hook point on the MLP module's output (`add_mlp_output_hooks`), the transcoder
                writes there and the post-MLP norm (its scale frozen in the local replacement model)
                maps what it writes to the residual stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch

from circuits.errors import CircuitsError


def block_hook(layer: int, name: str) -> str:
    """The TransformerLens name of hook `name` in block `layer`: 'blocks.{layer}.{name}'."""
    return f"blocks.{layer}.{name}"


def transcoder_hooks(transcoder, layer: int) -> tuple[str, str]:
    """(input hook, output hook) names of `layer` for a transcoder (or anything with its cfg)."""
    cfg = transcoder.cfg
    return block_hook(layer, cfg.input_hook), block_hook(layer, cfg.output_hook)


def check_hooks_exist(model, input_hook: str, output_hook: str, source: str = "the transcoder",
                      settings: tuple[str, str] = ("feature_input_hook", "feature_output_hook")) -> None:
    """Raise CircuitsError unless the model has both per-block hooks (checked on block 0); the
    message names the setting to change (`settings`: what the input and output hooks are called
    where `source` sets them)."""
    choices = {"input": "hook_resid_mid, ln2.hook_normalized, mlp.hook_in", "output": "hook_mlp_out, mlp.hook_out"}
    for role, setting, hook in (("input", settings[0], input_hook), ("output", settings[1], output_hook)):
        name = block_hook(0, hook)
        if name not in model.hook_dict:
            raise CircuitsError(f"{source}: {role} hook '{hook}' does not exist in the model (no {name}); "
                                f"set {setting} to one of {choices[role]}")


def check_transcoder_fits(model, transcoder, source: str = "the transcoder") -> None:
    """Raise CircuitsError unless `transcoder` (a transcoders.Transcoder) fits `model` (a
    HookedTransformer): same number of layers, same residual width, hooks that exist."""
    mcfg, tcfg = model.cfg, transcoder.cfg
    other = "they were made for another model: pass the --model they belong to"
    if tcfg.n_layers != mcfg.n_layers:
        raise CircuitsError(f"{source} has {tcfg.n_layers} layers but the model has {mcfg.n_layers}: {other}")
    if tcfg.d_model != mcfg.d_model:
        raise CircuitsError(f"{source} has width d_model={tcfg.d_model} but the model has {mcfg.d_model}: {other}")
    check_hooks_exist(model, tcfg.input_hook, tcfg.output_hook, source)


# --- published hook names -------------------------------------------------------------------
INPUT_HOOKS = ("hook_resid_mid", "ln2.hook_normalized", "mlp.hook_in")


def adapt_hooks(model, transcoder, source: str) -> None:
    """Rewrite `transcoder` (in place) so that it reads and writes hooks `model` has."""
    cfg = transcoder.cfg
    if cfg.output_hook == "mlp.hook_out":
        if has_post_mlp_norm(model):
            add_mlp_output_hooks(model)
        else:
            cfg.output_hook = "hook_mlp_out"
    if cfg.input_hook != "mlp.hook_in":
        return
    blocks = model.blocks
    ln2 = getattr(blocks[0], "ln2", None)
    if ln2 is None or block_hook(0, "ln2.hook_normalized") not in model.hook_dict:
        cfg.input_hook = "hook_resid_mid"  # no norm before the MLP: its input is resid_mid
        return
    if getattr(ln2, "w", None) is None:
        raise CircuitsError(f"{source}: feature_input_hook mlp.hook_in needs the ln2 weight, but this model's "
                            "norms were folded; load the model without LayerNorm folding")
    with torch.no_grad():
        w = torch.stack([b.ln2.w.detach().float() for b in blocks]).cpu()
        has_bias = getattr(ln2, "b", None) is not None
        b = torch.stack([blk.ln2.b.detach().float() for blk in blocks]).cpu() if has_bias else None
        transcoder.fold_input_norm(w, b)
    cfg.input_hook = "ln2.hook_normalized"


def has_post_mlp_norm(model) -> bool:
    """Whether the model normalises the MLP's output before adding it (Gemma-2/3's ln2_post)."""
    return bool(getattr(model.cfg, "use_normalization_before_and_after", False))


_HOOKED_MLP_CLASSES: dict[type, type] = {}


def _hooked_forward(self, *args, **kwargs):
    return self.hook_out(self._unhooked_forward(*args, **kwargs))


def add_mlp_output_hooks(model) -> None:
    """Give every block's MLP module a `mlp.hook_out` hook point on its output (what enters the
    post-MLP norm); idempotent. The weights and every other hook are unchanged."""
    from transformer_lens.hook_points import HookPoint

    if block_hook(0, "mlp.hook_out") in model.hook_dict:
        return
    for block in model.blocks:
        mlp = block.mlp
        base = type(mlp)
        if base not in _HOOKED_MLP_CLASSES:
            _HOOKED_MLP_CLASSES[base] = type(f"{base.__name__}WithHookOut", (base,),
                                             {"forward": _hooked_forward, "_unhooked_forward": base.forward})
        mlp.hook_out = HookPoint()
        mlp.__class__ = _HOOKED_MLP_CLASSES[base]
    model.setup()


def load_fitting_transcoder(model, path: str | Path, device: str = "cpu"):
    """Load transcoders (a directory, config.yaml or hub repo id; memory-mapped), map published hook names onto the model's
    (adapt_hooks), check it fits `model`, and freeze it (eval, no gradients)."""
    from transcoders.loading import load_transcoder

    tc = load_transcoder(path, device=device, lazy=True)
    source = getattr(tc, "source", "") or f"transcoder directory {path}"
    if (tc.cfg.n_layers, tc.cfg.d_model) == (model.cfg.n_layers, model.cfg.d_model):
        adapt_hooks(model, tc, source)
    check_transcoder_fits(model, tc, source=source)
    return freeze(tc)


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """`module` in eval mode with no parameter requiring gradients (tracing never trains it)."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


@dataclass
class LayerCapture:
    """What one forward pass recorded: per-layer transcoder inputs / MLP outputs and extra hooks."""

    x_b_t_layer_d: torch.Tensor               # [B, T, L, d] input hook of every layer
    y_b_t_layer_d: torch.Tensor | None        # [B, T, L, d] output hook of every layer (if asked)
    logits: torch.Tensor | None               # [B, T, vocab] (if asked)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # the `extra` hooks by name


@torch.no_grad()
def capture_layers(model, tokens_b_t: torch.Tensor, input_hook: str, output_hook: str | None = None,
                   extra: Iterable[str] = (), logits: bool = True, fwd_hooks: list = ()) -> LayerCapture:
    """Run `model` once on tokens [B, T] and keep every layer's `input_hook` (and `output_hook`)
    activations, plus the hooks named in `extra` (full names, e.g. 'blocks.0.attn.hook_pattern').
    `fwd_hooks` (TransformerLens (name, fn) pairs, e.g. an intervention's patches) act during the
    run; what is kept is read after them."""
    L = model.cfg.n_layers
    inputs = [block_hook(l, input_hook) for l in range(L)]
    outputs = [block_hook(l, output_hook) for l in range(L)] if output_hook is not None else []
    wanted = set(inputs) | set(outputs) | set(extra)
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        out, cache = model.run_with_cache(tokens_b_t.to(model.cfg.device), names_filter=lambda n: n in wanted,
                                          return_type="logits" if logits else None)
    x = torch.stack([cache[n] for n in inputs], dim=2)
    y = torch.stack([cache[n] for n in outputs], dim=2) if outputs else None
    return LayerCapture(x, y, out if logits else None, {n: cache[n] for n in extra if n in cache})
