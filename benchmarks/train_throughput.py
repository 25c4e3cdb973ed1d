"""Transcoder training throughput: tokens/s and achieved FLOP/s as a fraction of this machine's dense
matmul FLOP/s, measured in the same run, with where the time goes.

    python benchmarks/train_throughput.py --model world            # the default CLT config of `world`
    python benchmarks/train_throughput.py --model world --features 1024 --batch-size 4096
    python benchmarks/train_throughput.py --shape 30,576 --features 512 --steps 10   # SmolLM2-135M's shape
    python benchmarks/train_throughput.py --model smollm2-135m --e2e-tokens 16384    # its default PLT
    python benchmarks/train_throughput.py --model smollm2-135m --kind clt --e2e-tokens 8192  # its default CLT

FLOPs counted per token (matmuls only; elementwise work is counted as time, not FLOPs):
  forward   encode 2*L*F*d + decode 2*F*d*n_out        (n_out = L(L+1)/2 for a CLT, L for a PLT)
            (+ skip 2*L*d*d)
  backward  encode 2*L*F*d (weight grad only: inputs need none) + decode 2 * 2*F*d*n_out (+ skip 2*L*d*d)
  model     2 * (parameters outside the embedding) per token for the activation pass (attention's
            T-dependent part and the unembedding are left out: the pass stops after the last block)
End to end = the trainer's own clock (activation pass + steps + checkpoints + setup), as a fraction of
the float32 matmul rate (the activation pass may run in bfloat16: TrainConfig.activation_dtype).
Not a test; it prints a table to compare across versions and machines.
"""

from __future__ import annotations

import argparse
import time

import torch


def dense_matmul_flops(sizes=(256, 512, 1024, 2048), reps: int = 5, dtype=torch.float32) -> tuple[float, int]:
    """Best GEMM FLOP/s over square sizes (the machine's dense matmul rate in `dtype`)."""
    best, best_n = 0.0, 0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        rate = 2 * n**3 * reps / (time.perf_counter() - t0)
        if rate > best:
            best, best_n = rate, n
    return best, best_n


def flops_per_token(L: int, F: int, d: int, kind: str, skip: bool) -> tuple[float, float]:
    n_out = L * (L + 1) // 2 if kind == "clt" else L
    fwd = 2 * L * F * d + 2 * F * d * n_out + (2 * L * d * d if skip else 0)
    bwd = 2 * L * F * d + 2 * 2 * F * d * n_out + (2 * L * d * d if skip else 0)
    return fwd, bwd


def time_step_parts(L: int, d: int, cfg, steps: int) -> dict:
    """Seconds per step of each part of the trainer's optimisation step, on random normalised data."""
    from transcoders.loss import TranscoderObjective, _JumpReLUWithPenalties, encode_layer_major, layer_major_forward
    from transcoders.transcoder import Transcoder

    torch.manual_seed(0)
    tc = Transcoder(cfg.transcoder.fitted(L, d))
    if tc.threshold is not None:
        with torch.no_grad():
            tc.threshold.fill_(1.5)  # a trained transcoder's sparsity (~5% active), not the init's
    obj = TranscoderObjective(tc, cfg.sparsity_c, cfg.preact_coef)
    opt = torch.optim.Adam(obj.parameters(), lr=cfg.lr, fused=True)
    x, y = torch.randn(cfg.batch_size, L, d), torch.randn(cfg.batch_size, L, d)
    parts = {k: 0.0 for k in ("encode", "activation+penalties", "decode", "backward", "clip+adam")}
    for i in range(steps + 2):
        t = [time.perf_counter()]
        pre = encode_layer_major(tc, x.transpose(0, 1).contiguous()); t.append(time.perf_counter())
        norms = tc.decoder_norms()[:, None, :]
        acts, s_sum, p_sum = _JumpReLUWithPenalties.apply(pre, tc.threshold[:, None, :], norms, norms, cfg.sparsity_c,
                                                          cfg.transcoder.jumprelu_bandwidth); t.append(time.perf_counter())
        y_hat = layer_major_forward(tc, x, acts)[0]
        loss = torch.nn.functional.mse_loss(y_hat, y, reduction="sum") + cfg.sparsity_coef * s_sum + cfg.preact_coef * p_sum
        t.append(time.perf_counter())
        opt.zero_grad(set_to_none=True)
        loss.backward(); t.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(obj.parameters(), 1.0)
        opt.step(); t.append(time.perf_counter())
        if i >= 2:  # warm-up steps not counted
            for k, (a, b) in zip(parts, zip(t, t[1:])):
                parts[k] += (b - a) / steps
    return parts


def end_to_end(model_name: str, cfg, tokens: int) -> dict:
    """A real (short) training run: tokens/s and the trainer's own time split."""
    import tempfile

    from circuits.models import load_model
    from circuits.training.train import train_for_model

    loaded = load_model(model_name, progress=False)
    run_cfg = cfg.model_copy(update={"tokens": tokens, "threads": torch.get_num_threads(),
                                     "activation_tokens": min(tokens, cfg.activation_tokens or tokens)})
    with tempfile.TemporaryDirectory() as tmp:
        res = train_for_model(loaded, run_cfg, tmp, overwrite=True, progress=False, evaluate=False)
    tr = res.metrics["training"]
    embed = sum(p.numel() for n, p in loaded.model.named_parameters() if n.startswith(("embed", "unembed", "pos_embed")))
    model_flops = 2 * (sum(p.numel() for p in loaded.model.parameters()) - embed)
    return {"tokens": tr["tokens"], "seconds": tr["seconds"], "tokens_per_s": tr["tokens_per_s"],
            "model_flops_per_token": model_flops, **tr["timing"]}


def main() -> None:
    from circuits.models.registry import BUILTIN_MODELS
    from transcoders.train_config import TrainConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="world")
    ap.add_argument("--features", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--kind", choices=["clt", "plt"])
    ap.add_argument("--steps", type=int, default=30, help="timed optimisation steps")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (default: the trainer's automatic choice)")
    ap.add_argument("--e2e-tokens", type=int, default=200_000, help="tokens of the end-to-end run (0: skip)")
    ap.add_argument("--shape", help="L,d: time the step for this many layers and this width instead of "
                    "--model's (no model is loaded; no end-to-end run), e.g. 30,576 for SmolLM2-135M")
    ap.add_argument("--no-reuse-memory", dest="reuse_memory", action="store_false",
                    help="time the step without the trainer's allocator setting (transcoders/cpu_memory.py)")
    args = ap.parse_args()
    over = {k: v for k, v in {"n_features": args.features, "batch_size": args.batch_size, "kind": args.kind}.items() if v}
    from circuits.models.registry import default_transcoder_fields

    named = default_transcoder_fields(args.model, args.kind)  # e.g. smollm2-135m --kind clt: its default CLT
    cfg = (named or getattr(BUILTIN_MODELS.get(args.model), "transcoder_config", None) or TrainConfig()).updated(over)
    if cfg.transcoder.activation != "jumprelu":
        raise SystemExit("the step breakdown times the JumpReLU path; use --kind with the default activation")
    from transcoders.threads import pick_threads

    torch.set_num_threads(args.threads or pick_threads("cpu"))

    if args.shape:
        L, d = (int(v) for v in args.shape.split(","))
        args.e2e_tokens = 0  # no model to run
    else:
        from circuits.models import load_model

        mcfg = load_model(args.model, progress=False).model.cfg
        L, d = mcfg.n_layers, mcfg.d_model
    F = cfg.transcoder.n_features
    peak, peak_n = dense_matmul_flops()
    peak_bf16, _ = dense_matmul_flops(dtype=torch.bfloat16)
    from transcoders.cpu_memory import reuse_freed_memory

    with reuse_freed_memory("cpu" if args.reuse_memory else "none"):  # as the trainer does
        parts = time_step_parts(L, d, cfg, args.steps)
    step_s = sum(parts.values())
    fwd, bwd = flops_per_token(L, F, d, cfg.transcoder.kind, cfg.transcoder.skip)
    step_tok_s = cfg.batch_size / step_s
    achieved = (fwd + bwd) * step_tok_s
    print(f"machine: torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"dense fp32 matmul {peak / 1e9:.1f} GFLOP/s (best at {peak_n}^3), bf16 {peak_bf16 / 1e9:.1f} GFLOP/s")
    print(f"transcoder: {cfg.transcoder.kind}, L={L} d={d} F={F}, batch {cfg.batch_size} tokens; "
          f"{(fwd + bwd) / 1e6:.2f} MFLOP/token (fwd {fwd / 1e6:.2f}, bwd {bwd / 1e6:.2f})")
    print(f"optimisation step: {step_s * 1e3:.1f} ms, {step_tok_s:,.0f} tokens/s, "
          f"{achieved / 1e9:.1f} GFLOP/s = {achieved / peak:.2f} of dense matmul")
    print("where a step's time goes:")
    for k, v in parts.items():
        print(f"  {k:<10} {v * 1e3:7.2f} ms  {v / step_s:6.1%}")
    if args.e2e_tokens:
        e2e = end_to_end(args.model, cfg, args.e2e_tokens)
        total = e2e["seconds"]
        print(f"end to end ({e2e['tokens']:,} tokens incl. model forward passes): {e2e['tokens_per_s']:,.0f} tokens/s; "
              f"model forward {e2e['model_forward_s'] / total:.0%}, optimisation steps {e2e['step_s'] / total:.0%}, "
              f"checkpoints {e2e['checkpoint_s'] / total:.0%}, the rest (batching, logging, setup) "
              f"{(total - e2e['model_forward_s'] - e2e['step_s'] - e2e['checkpoint_s']) / total:.0%}")
        per_token = e2e["model_flops_per_token"] + fwd + bwd
        rate = per_token * e2e["tokens_per_s"]
        fwd_rate = e2e["model_flops_per_token"] * e2e["tokens"] / max(e2e["model_forward_s"], 1e-9)
        print(f"end to end: {per_token / 1e6:.0f} MFLOP/token (model {e2e['model_flops_per_token'] / 1e6:.0f}, "
              f"transcoder {(fwd + bwd) / 1e6:.0f}) -> {rate / 1e9:.1f} GFLOP/s = {rate / peak:.2f} of fp32 dense "
              f"matmul; activation pass alone {e2e['tokens'] / max(e2e['model_forward_s'], 1e-9):,.0f} tokens/s, "
              f"{fwd_rate / 1e9:.1f} GFLOP/s ({cfg.activation_dtype})")


if __name__ == "__main__":
    main()
