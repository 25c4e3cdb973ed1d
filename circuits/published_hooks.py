"""Hook names of published transcoders, mapped onto the hooks our replacement model reads.

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

import torch

from circuits.errors import CircuitsError
from circuits.hooks import block_hook

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
