"""Our transcoder trainer vs EleutherAI's sparsify (PyPI `eai-sparsify`, benchmark-only) on the same
activations, the same batches and the same held-out set, scored by one evaluation code.

    CIRCUITS_HOME=... SPARSIFY_PATH=/path/to/pkgs nice -n 10 python benchmarks/trainer_vs_sparsify.py \\
        --model smollm2-135m --corpus python-docstrings --tokens 59904 --eval-tokens 10000

1. The model runs once over the corpus: circuits.training.activations stores every layer's
   (ln2.hook_normalized, hook_mlp_out) pairs for --tokens positions, memory-mapped (bfloat16).
2. Each trainer runs in its own child process (so CPU seconds and peak RSS are its own), reading
   only that cache (neither loads the model), through the same ShuffleBuffer: identical batches.
   - ours: transcoders.trainer.train_transcoder with the model's default PLT config (`--ours k=v`
     overrides, e.g. --ours activation=jumprelu for the old recipe);
   - sparsify: one sparsify.SparseCoder per layer in transcoder mode (TopK, k = --k), driven the way
     sparsify.Trainer drives it: encoder bias -W_enc E[x] and b_dec E[y] from the first batch,
     loss = FVU (summed over layers), SignSGD in a ScheduleFreeWrapper (momentum 0.95) at
     lr 5e-3 / sqrt(F / 2^14), evaluated at the schedule-free average (`optimizer.eval()`, as its
     checkpoints are). sparsify's own Trainer runs the model forward for every batch instead of
     reading a cache; here both sides are charged the cache once (printed apart).
3. One evaluation code for both (circuits.training.fidelity.measure_fidelity on held-out text): FVU
   per layer (mean shown, and how many layers each side wins), L0 per layer, dead fraction, top-1
   agreement and KL with every MLP replaced.
Not a test; it prints one table. sparsify is imported only in its child process; if it is missing
the table says so.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class _NoModel:
    """A LayerReader that refuses to run: the children train from the cache only."""

    def __init__(self, n_layers: int, d_model: int):
        self.n_layers, self.d_model = n_layers, d_model

    def __call__(self, *args):
        raise RuntimeError("the benchmark's trainers must read the activation cache, not the model")


def _batches(cache: Path, cfg):
    from transcoders.activation_cache import CachedActivationSource
    from transcoders.activation_source import ShuffleBuffer

    meta = json.loads((cache / "meta.json").read_text())
    source = CachedActivationSource(cache, cfg.group_tokens(meta["n_layers"], meta["d_model"]))
    return ShuffleBuffer(source, cfg.batch_size, cfg.seed), meta


def child_ours(cache: Path, cfg, out: Path) -> None:
    from transcoders.trainer import train_transcoder

    meta = json.loads((cache / "meta.json").read_text())
    train_transcoder(_NoModel(meta["n_layers"], meta["d_model"]), [], cfg, out, model_name="benchmark",
                     source_id=meta["source_id"], progress=False)


def child_sparsify(cache: Path, cfg, out: Path, k: int) -> None:
    import torch
    from schedulefree import ScheduleFreeWrapper
    from sparsify import SparseCoder, TranscoderConfig as SparsifyTranscoder
    from sparsify.sign_sgd import SignSGD

    from transcoders.config import TranscoderConfig
    from transcoders.formats import save_transcoder
    from transcoders.transcoder import Transcoder

    torch.set_num_threads(cfg.threads or 1)
    buffer, meta = _batches(cache, cfg)
    L, d, F = meta["n_layers"], meta["d_model"], cfg.transcoder.n_features
    torch.manual_seed(cfg.seed)
    coders = [SparseCoder(d, SparsifyTranscoder(num_latents=F, k=k), "cpu", dtype=torch.float32) for _ in range(L)]
    lr = 5e-3 / (F / 2**14) ** 0.5
    opt = ScheduleFreeWrapper(SignSGD([dict(params=c.parameters(), lr=lr) for c in coders]), momentum=0.95)
    opt.train()
    for step in range(cfg.n_steps):
        x, y = buffer.next_batch()  # [N, L, d], the batches our trainer sees
        loss = 0.0
        for l, coder in enumerate(coders):
            xl, yl = x[:, l], y[:, l]
            if step == 0:  # sparsify.Trainer's first-step initialisation (transcoder mode)
                with torch.no_grad():
                    coder.encoder.bias.data = -xl.mean(0) @ coder.encoder.weight.data.T
                    coder.b_dec.data = yl.mean(0)
            loss = loss + coder(x=xl, y=yl).fvu
        loss.backward()
        opt.step()
        opt.zero_grad()
    opt.eval()
    tc = Transcoder(TranscoderConfig(kind="plt", n_layers=L, d_model=d, n_features=F, activation="topk", topk=k,
                                     input_hook=meta["input_hook"], output_hook=meta["output_hook"]))
    with torch.no_grad():
        for l, c in enumerate(coders):
            tc.W_enc[l].copy_(c.encoder.weight)
            tc.b_enc[l].copy_(c.encoder.bias)
            tc.W_dec[l][:, 0].copy_(c.W_dec)
            tc.b_dec[l].copy_(c.b_dec)
    out.mkdir(parents=True, exist_ok=True)
    save_transcoder(tc, out, model_name="benchmark", training_config={"sparsify": "1.3.3", "k": k, "lr": lr},
                    metrics={})


def run_child(side: str, args, cache: Path, out: Path) -> dict:
    """The child's own CPU seconds and peak RSS (it prints them as its last line)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("SPARSIFY_PATH"),
                                                                     os.environ.get("PYTHONPATH")])))
    side, _, k = side.partition(" k=")
    cmd = [sys.executable, __file__, "--child", side, "--cache", str(cache), "--out", str(out),
           "--config", json.dumps(args.config_flat), "--k", k or "0"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        return {"error": tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child_main(args) -> None:
    from transcoders.train_config import TrainConfig

    cfg = TrainConfig.from_flat(json.loads(args.config))
    t0 = time.perf_counter()
    if args.child == "ours":
        child_ours(Path(args.cache), cfg, Path(args.out))
    else:
        child_sparsify(Path(args.cache), cfg, Path(args.out), int(args.k))
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"cpu_s": round(ru.ru_utime + ru.ru_stime, 1), "peak_rss_gb": round(ru.ru_maxrss / 2**20, 2),
                      "wall_s": round(time.perf_counter() - t0, 1)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--corpus", default="python-docstrings")
    ap.add_argument("--tokens", type=int, default=59_904, help="training positions (both sides, one pass)")
    ap.add_argument("--epochs", type=int, default=1, help="passes over the --tokens positions (both sides)")
    ap.add_argument("--eval-tokens", type=int, default=10_000)
    ap.add_argument("--features", type=int, default=512)
    ap.add_argument("--k", default="56", help="sparsify's TopK k, or several (comma-separated: one sparsify run each; "
                    "its ReLU before the top-k leaves tokens with fewer than k active, so its L0 sits below k); "
                    "ours: its config's, unless --ours topk=K")
    ap.add_argument("--ours", nargs="*", default=[], help="key=value overrides of our default config")
    ap.add_argument("--sides", default="ours,sparsify")
    ap.add_argument("--child", choices=["ours", "sparsify"], help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(args)
        return

    import torch

    from circuits.models import load_model
    from circuits.training.activations import cache_activations
    from circuits.corpora.sequences import corpus_sequences
    from circuits.training.defaults import default_train_config
    from circuits.training.fidelity import measure_fidelity
    from transcoders.loading import load_transcoder

    torch.set_num_threads(1)
    loaded = load_model(args.model, progress=False)
    overrides = {}
    for item in args.ours:
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    cfg = default_train_config(args.model).updated(dict(n_features=args.features, tokens=args.tokens * args.epochs, threads=1,
                                                        eval_tokens=0, checkpoint_seconds=1e9, **overrides))
    cpu0 = time.process_time()
    cache = cache_activations(loaded, cfg, args.tokens, args.corpus, progress=False)
    cache_cpu = time.process_time() - cpu0
    cfg = cfg.updated({"cache_dir": str(cache), "activation_tokens": args.tokens})
    args.config_flat = cfg.flat()
    heldout, _ = corpus_sequences(loaded, args.corpus, cfg.seq_len, heldout=True)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        sides = [s for side in args.sides.split(",")
                 for s in ([f"sparsify k={k}" for k in args.k.split(",")] if side == "sparsify" else [side])]
        for i, side in enumerate(sides):
            out = Path(tmp) / str(i)
            run = run_child(side, args, cache, out)
            if "error" in run:
                rows[side] = run
                continue
            rep = measure_fidelity(loaded.model, load_transcoder(out), heldout, max_tokens=args.eval_tokens,
                                   seq_len=cfg.seq_len)
            rows[side] = {**run, **rep}
    print(f"\n{args.model}, {args.tokens} training positions of {args.corpus} x {args.epochs} epoch(s) (cache built once: {cache_cpu:.0f} "
          f"CPU s, 0 when reused), {args.eval_tokens} held-out positions, {args.features} features per layer; "
          f"ours: {cfg.transcoder.activation}" + (f" k={cfg.transcoder.topk}" if cfg.transcoder.topk else "")
          + f", sparsify: TopK k={args.k}\n")
    print("| | CPU s | peak RSS | FVU | L0 | dead | top-1 | KL | layers with the lower FVU |")
    print("|---|---|---|---|---|---|---|---|---|")
    fvus = {s: r["fvu_per_layer"] for s, r in rows.items() if "fvu_per_layer" in r}
    for side, r in rows.items():
        if "error" in r:
            print(f"| {side} | failed: {r['error']} |||||||")
            continue
        others = [v for s, v in fvus.items() if s != side]
        wins = sum(all(a < b[i] for b in others) for i, a in enumerate(r["fvu_per_layer"])) if others else "-"
        l0 = r["l0_total"] / len(r["l0_per_layer"])
        print(f"| {side} | {r['cpu_s']} | {r['peak_rss_gb']} GB | {r['fvu_mean']:.3f} | {l0:.1f} | "
              f"{r['dead_fraction']:.1%} | {r['top1_agreement']:.3f} | {r['kl_mean']:.3f} | {wins} of {len(r['fvu_per_layer'])} |")
    for side, r in rows.items():
        if "fvu_per_layer" in r:
            print(f"\n{side}, FVU per layer: {' '.join(f'{v:.2f}' for v in r['fvu_per_layer'])}")
            print(f"{side}, L0 per layer: {' '.join(f'{v:.0f}' for v in r['l0_per_layer'])}")


if __name__ == "__main__":
    main()
