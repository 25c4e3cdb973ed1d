"""A trace's FLOP floor beside its measured time: how far attribution is from the machine's peak.

    python benchmarks/flop_floor.py --model smollm2-135m --transcoders DIR \
        [--prompt "The capital of France is"] [--threads 1]

Floor = the multiply-adds no exact method can skip, for every target row (logits and active
features), counted from the prompt's shape:
- the backward sweep through the frozen blocks below the target's layer, over the positions up to
  the target's (its causal cone): per layer and position, the attention's value and output maps
  transposed (2 x d x d_attn) and mixing by the frozen pattern (positions x d_attn);
- the decoder contractions: per source feature in the cone, one d-vector per layer it writes to
  inside the cone;
- the error and token-embedding dot products (d each).
Peak = the best float32 matmul rate of this machine at the same thread count (a 2048^2 GEMM).
Prints measured attribution seconds, floor seconds at peak, and their ratio.
"""

from __future__ import annotations

import argparse
import time

import torch


def matmul_peak_flops(threads: int, n: int = 2048, reps: int = 5) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def floor_flops(rep, transcoder, n_layers: int, d: int, d_attn: int, d_kv: int, n_logits: int) -> float:
    """Multiply-adds x 2 of the floor described in the module docstring."""
    f = rep.features
    layer, pos = f.layer.cpu(), f.position.cpu()
    n_out = torch.tensor([transcoder.W_dec[l].shape[1] for l in range(n_layers)])
    total = 0.0
    targets = [(int(l), int(p)) for l, p in zip(layer, pos)] + [(n_layers, rep.n_pos - 1)] * n_logits
    counts: dict[tuple[int, int], int] = {}
    for t in targets:
        counts[t] = counts.get(t, 0) + 1
    for (l_t, p_t), n_rows in counts.items():
        P = p_t + 1
        sweep = l_t * P * (d * d_attn + d * d_kv) + l_t * P * P * d_attn
        in_cone = (layer < l_t) & (pos <= p_t)
        written = torch.clamp(torch.minimum(n_out[layer[in_cone]], l_t - layer[in_cone]), min=0)
        decoders = int(written.sum()) * d
        others = (l_t * P + P) * d
        total += n_rows * 2.0 * (sweep + decoders + others)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--transcoders", required=True)
    ap.add_argument("--prompt", default="The capital of France is")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    from circuits.attribution.config import TraceConfig
    from circuits.attribution.engine import attribution_rows
    from circuits.replacement.prompts import tokenize_prompt
    from circuits.replacement.model import ReplacementModel

    rm = ReplacementModel.load(args.model, args.transcoders, "cpu", False)
    tokens = tokenize_prompt(rm.model, args.prompt)
    t0 = time.perf_counter()
    attr = attribution_rows(rm.model, rm.transcoder, tokens, TraceConfig(memory_gb=None), threads=args.threads)
    seconds = time.perf_counter() - t0
    cfg = rm.model.cfg
    n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    flops = floor_flops(attr.rep, rm.transcoder, cfg.n_layers, cfg.d_model, cfg.n_heads * cfg.d_head,
                        n_kv * cfg.d_head, len(attr.logits.labels))
    peak = matmul_peak_flops(args.threads)
    floor_s = flops / peak
    print(f"prompt {args.prompt!r}: {len(tokens)} tokens, {len(attr.rep.features)} active features, "
          f"{len(attr.logits.labels)} logits, {args.threads} thread(s)")
    print(f"| measured s | floor GFLOP | peak GFLOP/s | floor s | measured / floor |")
    print(f"| --- | --- | --- | --- | --- |")
    print(f"| {seconds:.2f} | {flops / 1e9:.1f} | {peak / 1e9:.1f} | {floor_s:.2f} | {seconds / floor_s:.1f}x |")


if __name__ == "__main__":
    main()
