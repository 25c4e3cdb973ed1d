"""Run OUR engine on exact token ids and save its graph in the reference runner's npz layout.

    python benchmarks/our_runner.py --model-dir D --transcoders T --tokens 0,17,42,... --out ours.npz \
        [--max-feature-nodes N] [--batch-size B] [--repeat R] [--threads K] [--device cpu|cuda]

Same arguments and keys as benchmarks/reference_runner.py (see benchmarks/README.md), so that
benchmarks/compare_reference.py can put the two side by side. Runs in its own process so peak
memory is measured the same way for both engines.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path


def rss_now_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="our engine on exact token ids (reference-runner npz layout)")
    ap.add_argument("--model-dir", required=True, type=Path)
    ap.add_argument("--transcoders", required=True, type=Path)
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--max-feature-nodes", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--memory-gb", type=float, default=None,
                    help="our memory budget (default: none, every row kept as the reference does)")
    ap.add_argument("--max-n-logits", type=int, default=10)
    ap.add_argument("--desired-logit-prob", type=float, default=0.95)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--hf-checkpoint", action="store_true",
                    help="--model-dir is a transformers checkpoint (published hooks such as mlp.hook_in mapped)")
    args = ap.parse_args(argv)
    rss_start = rss_now_bytes()
    t_process = time.perf_counter()

    import numpy as np
    import torch

    from circuits.attribution.config import TraceConfig
    from circuits.attribution.engine import attribution_rows
    from circuits.attribution.to_graph import graph_edges
    from circuits.models.cache import load_cached_model
    from transcoders.loading import load_transcoder

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.hf_checkpoint:
        from circuits.replacement.hooks import load_fitting_transcoder
        from circuits.models.pretrained import load_hf_checkpoint

        model = load_hf_checkpoint(args.model_dir, args.device)
        tc = load_fitting_transcoder(model, args.transcoders, device=args.device)
    else:
        model = load_cached_model(args.model_dir, args.model_dir.name, args.device)
        tc = load_transcoder(args.transcoders, device=args.device)
    for p in tc.parameters():
        p.requires_grad_(False)
    setup_seconds = time.perf_counter() - t0
    peak_setup = peak_rss_bytes()
    tokens = torch.tensor([int(t) for t in args.tokens.split(",")])
    rss_before = rss_now_bytes()
    times, cpu_times = [], []
    for _ in range(args.repeat):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        c0, w0 = time.process_time(), time.perf_counter()
        config = TraceConfig(max_n_logits=args.max_n_logits, desired_logit_prob=args.desired_logit_prob,
                             max_feature_nodes=args.max_feature_nodes, batch_size=args.batch_size,
                             memory_gb=args.memory_gb)
        attr = attribution_rows(model, tc, tokens, config,
                                threads=args.threads)  # fixed, as the reference's: no adaptive thread count
        edges = graph_edges(attr)  # the reference's square: feature and logit rows over every node
        n_f, n_l, n_src = len(attr.feature_idx), edges.shape[0] - len(attr.feature_idx), edges.shape[1]
        A = np.zeros((n_src + n_l, n_src + n_l), dtype=np.float32)
        A[:n_f, :n_src], A[n_src:, :n_src] = edges[:n_f], edges[n_f:]
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - w0)
        cpu_times.append(time.process_time() - c0)
    rep = attr.rep
    f = rep.features
    idx = attr.feature_idx.cpu()
    L, P = rep.error_layer_pos_d.shape[0], rep.n_pos
    feature_nodes = torch.stack([f.layer.cpu()[idx], f.position.cpu()[idx], f.feature.cpu()[idx]], 1).numpy()
    n_f, n_e, n_l = len(idx), L * (P - 1), len(attr.logits.token_ids)
    kind = np.repeat(np.array([0, 1, 2, 3], dtype=np.int8), [n_f, n_e, P, n_l])
    err = np.array([(l, c) for l in range(L) for c in range(1, P)], dtype=np.int64).reshape(-1, 2)
    out = dict(
        adjacency=A, node_kind=kind, feature_nodes=feature_nodes, error_nodes=err,
        input_tokens=tokens.numpy(), logit_token_ids=np.array(attr.logits.token_ids),
        logit_probabilities=attr.logits.probabilities.cpu().numpy(),
        active_features=torch.stack([f.layer, f.position, f.feature], 1).cpu().numpy(),
        n_layers=L, n_pos=P, n_feature_nodes=n_f, n_error_nodes=n_e, n_active_features=len(f),
        setup_seconds=setup_seconds, attribution_seconds=min(times), attribution_seconds_all=np.array(times),
        attribution_cpu_seconds=min(cpu_times), process_seconds=time.perf_counter() - t_process,
        peak_rss_bytes=peak_rss_bytes(), peak_rss_setup_bytes=peak_setup, rss_start_bytes=rss_start,
        rss_before_attribution_bytes=rss_before,
        cuda_peak_bytes=torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else -1,
        meta_json=json.dumps({"engine": "circuits", "threads": torch.get_num_threads(),
                              "batch_size": args.batch_size, "timing": attr.timing_seconds,
                              "max_feature_nodes": args.max_feature_nodes, "memory_gb": args.memory_gb,
                              "threads_used": attr.threads}),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, **out)


if __name__ == "__main__":
    sys.exit(main())
