"""Make a small random model directory and random transcoder directories for the benchmark.

    python benchmarks/make_fixture.py --out benchmarks/work/fixture [--seed 0]

Writes (all plain files, no pickle):
  OUT/model/config.json        HookedTransformerConfig fields (the engine's model-cache format)
  OUT/model/model.safetensors  TransformerLens-named state dict of a random 4-layer LayerNorm model
  OUT/model/tokenizer.json     word-level `tokenizers` tokenizer: <bos> <unk> <pad> <eos> w4 ... wN
  OUT/model/meta.json          {"special_tokens": {...}} for transformers.PreTrainedTokenizerFast
  OUT/clt-<hook>/              random cross-layer transcoder, circuit-tracer layout
                               (config.yaml, W_enc_{i}.safetensors, W_dec_{i}.safetensors)
  OUT/plt-<hook>/              random per-layer transcoders, circuit-tracer layout
                               (config.yaml, layer_{i}.safetensors)
  OUT/clt-<hook>-skip/, OUT/plt-<hook>-skip/   the same transcoders plus a random skip term
                               (CLT: W_skip_{i} beside W_enc_{i}; PLT: W_skip in layer_{i}), for the
                               BOS rule of skip transcoders (issue 22: the skip path stays live at BOS)
for <hook> in {ln2.hook_normalized -> "norm", hook_resid_mid -> "resid"}.

JumpReLU thresholds are calibrated per layer on random prompts so that about --firing of the
features fire at a token: the graph then has a realistic number of active features. Needs torch,
safetensors, tokenizers, transformer_lens and pyyaml: runs in our environment or in the reference venv.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

SPECIAL = {"bos_token": "<bos>", "unk_token": "<unk>", "pad_token": "<pad>", "eos_token": "<eos>"}
HOOKS = {"norm": "ln2.hook_normalized", "resid": "hook_resid_mid"}


def make_tokenizer_json(d_vocab: int) -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(SPECIAL.values())}
    for i in range(len(vocab), d_vocab):
        vocab[f"w{i}"] = i
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok.to_str()


def config_dict(cfg) -> dict:
    out = {}
    for key, value in cfg.to_dict().items():
        if key in ("device", "n_devices", "dtype"):
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        out[key] = value
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "work" / "fixture")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--d-vocab", type=int, default=300)
    ap.add_argument("--n-ctx", type=int, default=64)
    ap.add_argument("--n-features", type=int, default=256, help="transcoder features per layer")
    ap.add_argument("--firing", type=float, default=0.08, help="target fraction of features firing")
    ap.add_argument("--unembed-scale", type=float, default=6.0, help="multiplies TL's random W_U")
    ap.add_argument("--skip-scale", type=float, default=0.5,
                    help="skip variants: |x W_skip| about this fraction of |mlp_out|")
    args = ap.parse_args()

    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(args.seed)
    L, d, F = args.n_layers, args.d_model, args.n_features
    cfg = HookedTransformerConfig(
        n_layers=L, d_model=d, n_heads=4, d_head=d // 4, d_mlp=4 * d, d_vocab=args.d_vocab,
        n_ctx=args.n_ctx, act_fn="gelu", normalization_type="LN", positional_embedding_type="standard",
        model_name="bench-fixture", seed=args.seed, device="cpu", default_prepend_bos=True,
    )
    model = HookedTransformer(cfg)
    with torch.no_grad():  # TL's default init is small; make the residual stream and MLPs matter
        for name, p in model.named_parameters():
            if name.endswith(("W_Q", "W_K")):
                p.mul_(4.0)
            if name.endswith(("b_in", "b_out", "b_O", "b_Q", "b_K", "b_V", "b_U")):
                p.normal_(0, 0.02)
            if name.endswith(("ln1.w", "ln2.w", "ln_final.w")):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            if name.endswith(("ln1.b", "ln2.b", "ln_final.b")):
                p.normal_(0, 0.05)
            if name.endswith("W_U"):  # a peaked next-token distribution: few logit nodes, as in real models
                p.mul_(args.unembed_scale)
    model.eval()

    mdir = args.out / "model"
    mdir.mkdir(parents=True, exist_ok=True)
    (mdir / "config.json").write_text(json.dumps(config_dict(model.cfg), indent=2))
    save_file({k: v.detach().float().contiguous() for k, v in model.state_dict().items()},
              str(mdir / "model.safetensors"))
    (mdir / "tokenizer.json").write_text(make_tokenizer_json(args.d_vocab))
    (mdir / "meta.json").write_text(json.dumps({"special_tokens": SPECIAL, "name": "bench-fixture"}, indent=2))

    # activations on random prompts (BOS first) to calibrate thresholds / decoder scale
    toks = torch.randint(4, args.d_vocab, (16, 32))
    toks[:, 0] = 0
    names = [f"blocks.{l}.{h}" for l in range(L) for h in (*HOOKS.values(), "hook_mlp_out")]
    with torch.no_grad():
        _, cache = model.run_with_cache(toks, names_filter=lambda n: n in names)

    g = torch.Generator().manual_seed(args.seed + 1)
    for short, hook in HOOKS.items():
        x = torch.stack([cache[f"blocks.{l}.{hook}"][:, 1:].reshape(-1, d) for l in range(L)])  # L,N,d
        y_rms = torch.stack([cache[f"blocks.{l}.hook_mlp_out"].pow(2).mean().sqrt() for l in range(L)])
        W_enc = torch.randn(L, F, d, generator=g) / d**0.5
        W_enc = W_enc / x.pow(2).mean(dim=(1, 2)).sqrt()[:, None, None]  # pre-acts ~ N(0, 1)
        b_enc = 0.1 * torch.randn(L, F, generator=g)
        pre = torch.einsum("lnd,lfd->lnf", x, W_enc) + b_enc[:, None]
        thr = torch.quantile(pre.reshape(L, -1), 1 - args.firing, dim=1)[:, None].expand(L, F).clone()
        thr = (thr * (1 + 0.1 * torch.randn(L, F, generator=g))).clamp_min(0.05)
        b_dec = 0.01 * torch.randn(L, d, generator=g)

        # CLT: W_dec_i is (F, L - i, d), output layer = i + j
        cdir = args.out / f"clt-{short}"
        cdir.mkdir(parents=True, exist_ok=True)
        for i in range(L):
            w_dec = torch.randn(F, L - i, d, generator=g) * (y_rms[i:, None] / (F * args.firing) ** 0.5 / d**0.5 * 0.5)[None]
            save_file({f"W_enc_{i}": W_enc[i].contiguous(), f"b_enc_{i}": b_enc[i].contiguous(),
                       f"b_dec_{i}": b_dec[i].contiguous(), f"threshold_{i}": thr[i].contiguous()},
                      str(cdir / f"W_enc_{i}.safetensors"))
            save_file({f"W_dec_{i}": w_dec.contiguous()}, str(cdir / f"W_dec_{i}.safetensors"))
        (cdir / "config.yaml").write_text(yaml.safe_dump({
            "model_kind": "cross_layer_transcoder", "feature_input_hook": hook,
            "feature_output_hook": "hook_mlp_out", "scan": f"bench-fixture-clt-{short}"}, sort_keys=False))

        # PLT: layer_{i}.safetensors with W_enc (F,d), W_dec (F,d), b_enc, b_dec, threshold
        pdir = args.out / f"plt-{short}"
        pdir.mkdir(parents=True, exist_ok=True)
        for i in range(L):
            w_dec = torch.randn(F, d, generator=g) * (y_rms[i] / (F * args.firing) ** 0.5 / d**0.5)
            save_file({"W_enc": W_enc[i].contiguous(), "W_dec": w_dec.contiguous(), "b_enc": b_enc[i].contiguous(),
                       "b_dec": b_dec[i].contiguous(), "activation_function.threshold": thr[i].contiguous()},
                      str(pdir / f"layer_{i}.safetensors"))
        (pdir / "config.yaml").write_text(yaml.safe_dump({
            "model_kind": "transcoder_set", "feature_input_hook": hook, "feature_output_hook": "hook_mlp_out",
            "scan": f"bench-fixture-plt-{short}",
            "transcoders": [f"layer_{i}.safetensors" for i in range(L)]}, sort_keys=False))

        # skip variants: the same files plus W_skip (its own generator: the files above are unchanged)
        g_skip = torch.Generator().manual_seed(args.seed + 2)
        x_rms = x.pow(2).mean(dim=(1, 2)).sqrt()
        W_skip = torch.randn(L, d, d, generator=g_skip) / d**0.5 * (args.skip_scale * y_rms / x_rms)[:, None, None]
        for src, key in ((cdir, "W_skip_{i}"), (pdir, "W_skip")):
            sdir = args.out / f"{src.name}-skip"
            sdir.mkdir(parents=True, exist_ok=True)
            for f in src.iterdir():
                (sdir / f.name).write_bytes(f.read_bytes())
            for i in range(L):
                path = sdir / (f"W_enc_{i}.safetensors" if src is cdir else f"layer_{i}.safetensors")
                tensors = load_file(str(path))
                tensors[key.format(i=i)] = W_skip[i].contiguous()
                save_file(tensors, str(path))
            config = yaml.safe_load((sdir / "config.yaml").read_text())
            config["scan"] += "-skip"
            (sdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"fixture written to {args.out}: model/, " + ", ".join(f"{k}-{s}{v}/" for s in HOOKS for k in ("clt", "plt")
                                                                   for v in ("", "-skip")))


if __name__ == "__main__":
    main()
