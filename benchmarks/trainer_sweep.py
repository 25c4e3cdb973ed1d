"""Trainer settings compared at a fixed token budget on one activation cache: held-out FVU, L0,
dead fraction, top-1 agreement and KL (every MLP replaced), and the training's CPU seconds.

    CIRCUITS_HOME=... nice -n 10 python benchmarks/trainer_sweep.py --model smollm2-135m \\
        --corpus python-docstrings --tokens 60000 --eval-tokens 4096 base batchtopk batchtopk+fvu ...

Each variant is the model's default PLT config updated by the settings named in VARIANTS (or
`name:key=value,key=value`). The model runs once over the corpus (the activation cache, built by
circuits.training.activations, reused by every variant and by later invocations); the held-out
evaluation (circuits.training.fidelity.measure_fidelity) is the same code for every row. CPU seconds
are the process's CPU time (all threads) during training only. Not a test: it prints a table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

K = 56  # TopK / BatchTopK k: the default PLT's measured per-layer L0 (issue 23)
BTK = dict(activation="batchtopk", topk=K, sparsity_coef=0.0, preact_coef=0.0)
FAST = dict(lr_warmup_steps=0, lr_decay_frac=0.2)
DATA_INIT = dict(decoder_init="zero", encoder_bias_init="centred")
VARIANTS: dict[str, dict] = {
    "base": {},
    "base+fvu": dict(recon_loss="fvu"),
    "topk": dict(BTK, activation="topk"),
    "batchtopk": dict(BTK),
    "batchtopk+nowarm": dict(BTK, **FAST),
    "batchtopk+datainit": dict(BTK, **DATA_INIT),
    "batchtopk+fvu": dict(BTK, recon_loss="fvu"),
    "batchtopk+auxk": dict(BTK, auxk_coef=1 / 32, revive_after_tokens=10_000),
    "batchtopk+unitnorm": dict(BTK, decoder_unit_norm=True, decoder_init="encoder"),
    "batchtopk+lr6e-3": dict(BTK, lr=6e-3),
    "batchtopk+bs256": dict(BTK, batch_size=256),
}


def parse_variant(spec: str) -> tuple[str, dict]:
    """'name' from VARIANTS, or 'name:key=value,...' (values parsed as JSON when they parse)."""
    name, _, rest = spec.partition(":")
    settings = dict(VARIANTS.get(name, {}))
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
    return name, settings


def run_variant(loaded, base_cfg, settings: dict, corpus: str, eval_tokens: int, work: Path) -> dict:
    import torch

    from circuits.training.corpus import corpus_sequences
    from circuits.training.fidelity import measure_fidelity
    from circuits.training.train import train_for_model

    cfg = base_cfg.updated(settings)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = train_for_model(loaded, cfg, work / f"run{time.monotonic_ns()}", corpus, progress=False, evaluate=False)
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    heldout, _ = corpus_sequences(loaded, corpus, cfg.seq_len, heldout=True)
    torch.set_num_threads(1)
    report = measure_fidelity(loaded.model, result.transcoder, heldout, max_tokens=eval_tokens, seq_len=cfg.seq_len)
    return {"cpu_s": round(cpu, 1), "wall_s": round(wall, 1), "fvu": report["fvu_mean"],
            "l0": report["l0_total"] / len(report["l0_per_layer"]), "dead": report["dead_fraction"],
            "top1": report["top1_agreement"], "kl": report["kl_mean"],
            "fvu_per_layer": report["fvu_per_layer"], "dead_train": result.metrics["training"]["dead_fraction_train"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("variants", nargs="*", default=["base", "batchtopk"])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--corpus", default="python-docstrings")
    ap.add_argument("--tokens", type=int, default=60_000, help="training tokens (one pass over the cache)")
    ap.add_argument("--cache-tokens", type=int, default=None, help="cached positions (default --tokens)")
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--json", type=Path, default=None, help="append one JSON line per variant here")
    args = ap.parse_args()

    import torch

    from circuits.models import load_model
    from circuits.training.activations import cache_activations
    from circuits.training.defaults import default_train_config

    torch.set_num_threads(1)
    loaded = load_model(args.model, progress=False)
    base = default_train_config(args.model).updated(dict(tokens=args.tokens, threads=1, eval_tokens=0,
                                                         checkpoint_seconds=1e9))
    cpu0 = time.process_time()
    cache = cache_activations(loaded, base, args.cache_tokens or args.tokens, args.corpus, progress=False)
    print(f"activation cache {cache}: {time.process_time() - cpu0:.1f} CPU s (0 when reused)", flush=True)
    base = base.updated({"cache_dir": str(cache), "activation_tokens": args.cache_tokens or args.tokens})
    print(f"| variant | CPU s | FVU | L0/layer | dead | top-1 | KL |\n|---|---|---|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.variants:
            name, settings = parse_variant(spec)
            row = run_variant(loaded, base, settings, args.corpus, args.eval_tokens, Path(tmp))
            print(f"| {name} | {row['cpu_s']} | {row['fvu']:.3f} | {row['l0']:.1f} | {row['dead']:.1%} | "
                  f"{row['top1']:.3f} | {row['kl']:.3f} |", flush=True)
            if args.json is not None:
                with args.json.open("a") as f:
                    f.write(json.dumps({"variant": name, "settings": settings, "tokens": args.tokens, **row}) + "\n")


if __name__ == "__main__":
    main()
