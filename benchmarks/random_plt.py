"""A random per-layer transcoder with a real model's shape, for timing only (seconds to make).

    python benchmarks/random_plt.py --model smollm2-135m --out benchmarks/work/random-plt \
        [--features 512] [--l0 90]

Encoders are random directions scaled to unit pre-activation variance on a few of the model's own
activations; JumpReLU thresholds are set per layer so about --l0 features fire per token; decoders
are random at the MLP output's scale. Attribution cost depends on the shapes and the number of
active features, not on what the features mean, so timings on it stand for a trained one of the
same size (a trained one is what `circuits transcoders train` makes, in much longer).
Written in circuit-tracer's PLT layout (config.yaml + layer_{i}.safetensors).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--features", type=int, default=512)
    ap.add_argument("--l0", type=float, default=90.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from circuits.models.registry import load_model

    model = load_model(args.model, progress=False).model
    L, d, F = model.cfg.n_layers, model.cfg.d_model, args.features
    text = ("The capital of France is Paris. Water boils at one hundred degrees. "
            "def add(a, b): return a + b  # the sum of two numbers")
    toks = model.to_tokens(text)
    hook_in = "ln2.hook_normalized"
    names = {f"blocks.{l}.{h}" for l in range(L) for h in (hook_in, "hook_mlp_out")}
    with torch.no_grad():
        _, cache = model.run_with_cache(toks, names_filter=lambda n: n in names)
    g = torch.Generator().manual_seed(args.seed)
    firing = min(1.0, args.l0 / F)
    args.out.mkdir(parents=True, exist_ok=True)
    for l in range(L):
        x = cache[f"blocks.{l}.{hook_in}"][0, 1:].float()  # [N, d]
        y_rms = cache[f"blocks.{l}.hook_mlp_out"].float().pow(2).mean().sqrt()
        W_enc = torch.randn(F, d, generator=g) / d ** 0.5 / x.pow(2).mean().sqrt()
        b_enc = 0.1 * torch.randn(F, generator=g)
        pre = x @ W_enc.T + b_enc
        thr = torch.quantile(pre.flatten(), 1 - firing).expand(F).clone().clamp_min(0.05)
        W_dec = torch.randn(F, d, generator=g) * (y_rms / (F * firing) ** 0.5 / d ** 0.5)
        save_file({"W_enc": W_enc.contiguous(), "W_dec": W_dec.contiguous(), "b_enc": b_enc.contiguous(),
                   "b_dec": torch.zeros(d), "activation_function.threshold": thr.contiguous()},
                  str(args.out / f"layer_{l}.safetensors"))
    (args.out / "config.yaml").write_text(yaml.safe_dump({
        "model_kind": "transcoder_set", "feature_input_hook": hook_in, "feature_output_hook": "hook_mlp_out",
        "scan": f"random-plt-{args.model}", "transcoders": [f"layer_{l}.safetensors" for l in range(L)]},
        sort_keys=False))
    print(f"wrote {args.out} ({L} layers x {F} features, ~{args.l0:g} firing per token and layer)")


if __name__ == "__main__":
    main()
