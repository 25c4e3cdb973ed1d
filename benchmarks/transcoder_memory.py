"""Memory of tracing with big transcoders: peak RSS vs the transcoder's size on disk.

Writes a random CLT at SmolLM2-135M's shape (30 layers, d=576) with --features features per layer
in bf16 (16,384: about 9 GB of decoder), and a PLT set of the same width, under benchmarks/work/
(git-ignored), then traces a prompt with the built-in `smollm2-135m` (real weights) in a fresh
process per transcoder and prints a table: size on disk, peak RSS of the process, RSS of the model
alone, transcoder load time, first-trace time. The files are deleted afterwards (--keep keeps them).

    nice -n 10 python benchmarks/transcoder_memory.py [--features 16384] [--keep]

The random encoder (N(0, 1/d)) is scaled so that a feature fires on ~0.05% of tokens (~8 per layer
and position), with JumpReLU thresholds; decoder rows are N(0, 1/F) vectors drawn from a pool.
Files are written by streaming chunks (the writer itself never holds a whole matrix).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "work" / "transcoder_memory"
L, D = 30, 576  # SmolLM2-135M
CHUNK = 2048  # feature rows generated at a time
THRESHOLD = 3.3  # pre-activations ~ N(0, 1) on normalised inputs: P(h > 3.3) ~ 0.05%


def _write_safetensors(path: Path, specs: dict[str, tuple[tuple[int, ...], callable]]) -> None:
    """Stream a bf16 safetensors file: specs = {name: (shape, gen(rows) -> bf16 tensor of rows)}."""
    header, offset = {}, 0
    for name, (shape, _) in specs.items():
        n = 2
        for s in shape:
            n *= s
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path.with_suffix(".partial")
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)) + blob)
        for name, (shape, gen) in specs.items():
            rows = shape[0]
            for r0 in range(0, rows, CHUNK):
                fh.write(gen(r0, min(rows, r0 + CHUNK)).to(torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes())
    tmp.replace(path)


def _randn(shape_tail, scale, seed):
    def gen(r0, r1):
        g = torch.Generator().manual_seed(seed * 1_000_003 + r0)
        return torch.randn(r1 - r0, *shape_tail, generator=g) * scale
    return gen


def _pooled(shape_tail, scale, seed, pool_rows=8192):
    """Decoder rows drawn from a pool of random d-vectors (activations never read decoders, so
    their values only need to be plausible; a full randn of 4.6e9 values would dominate the run)."""
    g = torch.Generator().manual_seed(seed)
    pool = (torch.randn(pool_rows, D, generator=g) * scale).to(torch.bfloat16)
    per_row = 1
    for s in shape_tail[:-1]:
        per_row *= s

    def gen(r0, r1):
        idx = (torch.arange(r0 * per_row, r1 * per_row) * 7919 + seed) % pool_rows
        return pool[idx].reshape(r1 - r0, *shape_tail)
    return gen


def _const(shape_tail, value):
    return lambda r0, r1: torch.full((r1 - r0, *shape_tail), float(value))


def write_clt(d: Path, F: int) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for i in range(L):
        _write_safetensors(d / f"W_enc_{i}.safetensors", {
            f"W_enc_{i}": ((F, D), _randn((D,), D ** -0.5, 2 * i)), f"b_enc_{i}": ((F,), _const((), 0.0)),
            f"b_dec_{i}": ((D,), _const((), 0.0)), f"threshold_{i}": ((F,), _const((), THRESHOLD))})
        _write_safetensors(d / f"W_dec_{i}.safetensors", {f"W_dec_{i}": ((F, L - i, D), _pooled((L - i, D), F ** -0.5, 2 * i + 1))})
    (d / "config.yaml").write_text("model_kind: cross_layer_transcoder\nfeature_input_hook: ln2.hook_normalized\n"
                                   "feature_output_hook: hook_mlp_out\nscan: bench/random-clt\n")


def write_plt(d: Path, F: int) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for i in range(L):
        _write_safetensors(d / f"layer_{i}.safetensors", {
            "W_enc": ((F, D), _randn((D,), D ** -0.5, 2 * i)), "W_dec": ((F, D), _pooled((D,), F ** -0.5, 2 * i + 1)),
            "b_enc": ((F,), _const((), 0.0)), "b_dec": ((D,), _const((), 0.0)),
            "activation_function.threshold": ((F,), _const((), THRESHOLD))})
    (d / "config.yaml").write_text("model_kind: transcoder_set\nfeature_input_hook: ln2.hook_normalized\n"
                                   "feature_output_hook: hook_mlp_out\nscan: bench/random-plt\n")


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(tdir: Path, prompt: str, max_feature_nodes: int) -> dict:
    """In this (fresh) process: load the model, then the transcoders, then trace once."""
    from circuits.replacement.hooks import load_fitting_transcoder
    from circuits.models import load_model
    from circuits.replacement.model import ReplacementModel
    from circuits.attribution.config import TraceConfig
    from circuits.trace import trace_prompt

    torch.set_num_threads(2)
    loaded = load_model("smollm2-135m", progress=False)
    rss_model = _rss_mib()
    peak_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    tc = load_fitting_transcoder(loaded.model, tdir)
    t_load = time.perf_counter() - t0
    rss_loaded = _rss_mib()
    rm = ReplacementModel(loaded, tc, tdir)
    t0 = time.perf_counter()
    res = trace_prompt(rm, prompt, TraceConfig(max_feature_nodes=max_feature_nodes))
    t_trace = time.perf_counter() - t0
    g = res.graph
    return {"rss_model_mib": rss_model, "peak_before_tc_mib": peak_model, "rss_after_load_mib": rss_loaded,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "load_s": t_load, "trace_s": t_trace,
            "n_nodes": g.n_nodes, "storage": str(tc.storage_dtype)}


def _size(d: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in d.glob(pattern))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", type=int, default=16384)
    ap.add_argument("--prompt", default="The capital of France is Paris, and the capital of Texas is")
    ap.add_argument("--max-feature-nodes", type=int, default=2000)
    ap.add_argument("--kinds", default="clt,plt")
    ap.add_argument("--repeats", type=int, default=1, help="fresh-process runs per transcoder (medians reported)")
    ap.add_argument("--keep", action="store_true", help="keep the written transcoders")
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.prompt, args.max_feature_nodes)))
        return
    F, kinds = args.features, args.kinds.split(",")
    need = (L * (L + 1) // 2 * F * D * 2 + L * F * D * 2) * ("clt" in kinds) + 2 * L * F * D * 2 * ("plt" in kinds)
    free = shutil.disk_usage(WORK.parent if WORK.parent.exists() else ROOT).free
    if free < need * 1.2 + (2 << 30):
        sys.exit(f"error: writing the transcoders needs {need / 2**30:.1f} GiB; {free / 2**30:.1f} GiB free")
    rows = []
    try:
        for kind in kinds:
            tdir = WORK / f"{kind}-{F}"
            if not (tdir / "config.yaml").exists():
                t0 = time.perf_counter()
                (write_clt if kind == "clt" else write_plt)(tdir, F)
                print(f"wrote {tdir} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            runs = []
            for _ in range(args.repeats):
                out = subprocess.run([sys.executable, __file__, "--measure", str(tdir), "--prompt", args.prompt,
                                      "--max-feature-nodes", str(args.max_feature_nodes)],
                                     capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
                if out.returncode:
                    sys.exit(out.stderr[-3000:])
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            med = {k: sorted(r[k] for r in runs)[len(runs) // 2] for k in runs[0] if isinstance(runs[0][k], float)}
            dec = _size(tdir, "W_dec_*.safetensors") if kind == "clt" else 2 * L * F * D * 2
            rows.append((kind, _size(tdir, "*.safetensors"), dec, med, runs[0]))
    finally:
        if not args.keep and WORK.exists():
            shutil.rmtree(WORK)
    print(f"\nSmolLM2-135M (smollm2-135m), random {F}-feature/layer transcoders in bf16, prompt of "
          f"{len(args.prompt.split())} words, max_feature_nodes={args.max_feature_nodes}; medians of {args.repeats} run(s)")
    print(f"{'kind':4} {'on disk':>9} {'decoder':>9} {'peak RSS':>9} {'model RSS':>9} {'tc + trace':>10} "
          f"{'peak/dec':>8} {'load':>7} {'1st trace':>9} {'nodes':>6}")
    for kind, total, dec, m, first in rows:
        extra = m["peak_rss_mib"] - m["rss_model_mib"]
        print(f"{kind:4} {total / 2**30:8.2f}G {dec / 2**30:8.2f}G {m['peak_rss_mib'] / 1024:8.2f}G "
              f"{m['rss_model_mib'] / 1024:8.2f}G {extra / 1024:9.2f}G {m['peak_rss_mib'] * 2**20 / dec:8.1%} "
              f"{m['load_s']:6.2f}s {m['trace_s']:8.1f}s {first['n_nodes']:6d}")


if __name__ == "__main__":
    main()
