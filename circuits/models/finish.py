"""How every model leaves the loaders (cache, pretrained checkpoints, hub ids, wheels)."""

from __future__ import annotations

from circuits.replacement.hooks import add_mlp_output_hooks, has_post_mlp_norm


def finish_model(model, device):
    """Eval mode, frozen parameters, on `device`: how every model leaves the loaders. Models with a
    post-MLP norm (Gemma) also get `blocks.{l}.mlp.hook_out`, the MLP module's output before it."""
    model.to(device, print_details=False)  # (TransformerLens would print the move to stdout)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    if has_post_mlp_norm(model):
        add_mlp_output_hooks(model)
    return model
