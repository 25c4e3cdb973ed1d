"""Hook names of published transcoders, mapped onto the hooks our replacement model reads.

  hook_resid_mid, ln2.hook_normalized, hook_mlp_out   used as they are
  mlp.hook_in   circuit-tracer's MLP input: the ln2 output AFTER its weight (and bias), w * n + b with
                n = ln2.hook_normalized. The weight and bias are folded into the transcoder
                (W_enc diag(w), b_enc + W_enc b; the skip term likewise), which then reads n exactly.
                A model without ln2 feeds resid_mid to the MLP: then it is hook_resid_mid.
  mlp.hook_out  circuit-tracer's MLP output: hook_mlp_out, for models without a norm after the MLP.
"""

from __future__ import annotations

import torch

from circuits.errors import CircuitsError

INPUT_HOOKS = ("hook_resid_mid", "ln2.hook_normalized", "mlp.hook_in")


def adapt_hooks(model, transcoder, source: str) -> None:
    """Rewrite `transcoder` (in place) so that it reads and writes hooks `model` has."""
    cfg = transcoder.cfg
    if cfg.output_hook == "mlp.hook_out":
        if getattr(model.cfg, "use_normalization_before_and_after", False):
            raise CircuitsError(f"{source}: feature_output_hook mlp.hook_out (before the post-MLP norm) is not "
                                "supported on this model yet; use transcoders written at hook_mlp_out")
        cfg.output_hook = "hook_mlp_out"
    if cfg.input_hook != "mlp.hook_in":
        return
    blocks = model.blocks
    ln2 = getattr(blocks[0], "ln2", None)
    if ln2 is None or "blocks.0.ln2.hook_normalized" not in model.hook_dict:
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


def check_hooks(model, transcoder, source: str) -> None:
    """One line naming the config and the fix if a hook does not exist in the model."""
    cfg = transcoder.cfg
    for role, key, hook in (("input", "feature_input_hook", cfg.input_hook),
                            ("output", "feature_output_hook", cfg.output_hook)):
        if f"blocks.0.{hook}" not in model.hook_dict:
            choices = "hook_resid_mid, ln2.hook_normalized, mlp.hook_in" if role == "input" \
                else "hook_mlp_out, mlp.hook_out"
            raise CircuitsError(f"{source}: {role} hook '{hook}' does not exist in the model (no blocks.0.{hook}); "
                                f"set {key} to one of {choices}")
