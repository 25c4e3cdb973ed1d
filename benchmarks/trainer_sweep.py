"""Trainer settings compared at a fixed token budget on one activation cache, on a few layers of a
per-layer transcoder (its layers train independently, so a subset costs a fraction of a full run):
held-out FVU, L0 and dead fraction per layer, and the training's CPU seconds.

    CIRCUITS_HOME=... PYTHONPATH=. nice -n 10 python benchmarks/trainer_sweep.py --model smollm2-135m \\
        --corpus python-docstrings --tokens 30720 --layers 0,6,12,18,24,29 base batchtopk batchtopk+fvu ...

Each variant is the JumpReLU PLT recipe that was SmolLM2's default before issue 23
(registry.SMOLLM2_JUMPRELU_PLT) updated by the settings named in VARIANTS (or `name:key=value,...`). The model runs once over the corpus and once over held-out text (two
activation caches, circuits.training.activations, reused by every variant and later invocations);
each variant runs the trainer's own step (TrainState.train_step with lr_at / sparsity_at) on the
chosen layers. CPU seconds: the process's CPU time during training only. Top-1 and KL need every
layer: benchmarks/trainer_vs_sparsify.py measures them for whole transcoders. Not a test.
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
    "base+nowarm": dict(lr_warmup_steps=0),
}
NW = dict(BTK, lr_warmup_steps=0)  # round 2: every change on top of BatchTopK without warm-up
VARIANTS.update({
    "btk-nw+auxk": dict(NW, auxk_coef=1 / 32, revive_after_tokens=10_000),
    "btk-nw+fvu": dict(NW, recon_loss="fvu"),
    "btk-nw+lr4e-3": dict(NW, lr=4e-3),
    "btk-nw+lr8e-3": dict(NW, lr=8e-3),
    "btk-nw+bs256": dict(NW, batch_size=256),
    "btk-nw+bs1024": dict(NW, batch_size=1024),
    "btk-nw+datainit": dict(NW, **DATA_INIT),
    "btk-nw+centred": dict(NW, encoder_bias_init="centred"),
    "btk-nw+unitnorm": dict(NW, decoder_unit_norm=True, decoder_init="encoder"),
    "btk-nw+nodecay": dict(NW, lr_decay_frac=0.0),
})
NW8 = dict(NW, lr=8e-3)  # round 3: on top of BatchTopK, no warm-up, lr 8e-3
VARIANTS.update({
    "jumprelu-nw+lr8e-3": dict(lr_warmup_steps=0, lr=8e-3),
    "btk-nw8+k78": dict(NW8, topk=78),
    "btk-nw8+lr1.2e-2": dict(NW8, lr=1.2e-2),
    "btk-nw8+auxk": dict(NW8, auxk_coef=1 / 8, revive_after_tokens=2048),
    "btk-nw8+auxk+fvu": dict(NW8, auxk_coef=1 / 8, revive_after_tokens=2048, recon_loss="fvu"),
    "btk-nw8+datainit": dict(NW8, **DATA_INIT),
    "btk-nw8+datainit+lr1.2e-2": dict(NW8, **DATA_INIT, lr=1.2e-2),
    "btk-nw8+datainit+k78": dict(NW8, **DATA_INIT, topk=78),
})

D8 = dict(NW8, **DATA_INIT)  # round 4 (session 9): on top of the default; skip terms, width, epochs
SKIP = dict(D8, skip=True)
VARIANTS.update({
    "d8": D8,
    "d8+skip": SKIP,
    "d8+skip-lstsq": dict(SKIP, skip_init="lstsq"),
    "d8+skip-lstsq-frozen": dict(SKIP, skip_init="lstsq", skip_lr_scale=0.0),
    "d8+skip-lstsq-slow": dict(SKIP, skip_init="lstsq", skip_lr_scale=0.1),
    "d8+f2048": dict(D8, n_features=2048),
    "d8+f1024": dict(D8, n_features=1024),
    "d8+auxk": dict(D8, auxk_coef=1 / 32, revive_after_tokens=4096),
    "d8+auxk8": dict(D8, auxk_coef=1 / 8, revive_after_tokens=4096),
    "d8+lr4e-3": dict(D8, lr=4e-3),
    "d8+encdata": dict(D8, encoder_init="data"),
})


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


class LayerSubset:
    """A cached activation source restricted to some layers (PLT layers train independently)."""

    def __init__(self, source, layers: list[int]):
        self.source, self.layers = source, layers
        self.model_seconds = 0.0

    def start_position(self):
        return self.source.start_position()

    def read_group(self, start):
        x, y, nxt = self.source.read_group(start)
        return x[:, self.layers].contiguous(), y[:, self.layers].contiguous(), nxt


def train_layers(cache: Path, heldout: Path, cfg, layers: list[int]) -> dict:
    """The trainer's own step (TrainState.train_step, lr_at, sparsity_at) on `layers` of the cache;
    held-out FVU, L0 and dead fraction from the held-out cache. CPU seconds: training only."""
    import torch

    from transcoders.activation_cache import CachedActivationSource
    from transcoders.activation_source import ShuffleBuffer
    from transcoders.distributed import DistInfo
    from transcoders.metrics import ReconstructionStats
    from transcoders.train_state import TrainState
    from transcoders.trainer import lr_at, sparsity_at

    d = json.loads((cache / "meta.json").read_text())["d_model"]
    group = cfg.group_tokens(len(layers), d)
    buffer = ShuffleBuffer(LayerSubset(CachedActivationSource(cache, group), layers), cfg.batch_size, cfg.seed)
    cpu0 = time.process_time()
    state = TrainState(cfg, len(layers), d, "cpu", DistInfo(), model_name="sweep", source_id="sweep")
    state.init_fresh(*buffer.current_group())
    for step in range(cfg.n_steps):
        x, y = buffer.next_batch()
        state.train_step(x, y, lr_at(cfg, step), sparsity_at(cfg, step))
    cpu = time.process_time() - cpu0
    tc = state.raw_transcoder()
    held = CachedActivationSource(heldout, 4096)
    stats = ReconstructionStats(len(layers), tc.n_features)
    with torch.no_grad():
        for row in range(0, held.n, 4096):
            x, y, _ = held.read_group({"row": row})
            n = min(4096, held.n - row)
            x, y = x[:n, layers], y[:n, layers]
            y_hat, acts, _ = tc(x)
            stats.update(y, y_hat, acts)
    rep = stats.summary()
    return {"cpu_s": round(cpu, 1), "fvu": rep["fvu_mean"], "l0": rep["l0_total"] / len(layers),
            "dead": rep["dead_fraction"], "dead_per_layer": rep["dead_per_layer"], "fvu_per_layer": rep["fvu_per_layer"],
            "l0_per_layer": rep["l0_per_layer"], "dead_train": round(state.dead_fraction(), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("variants", nargs="*", default=["base", "batchtopk"])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--corpus", default="python-docstrings")
    ap.add_argument("--tokens", type=int, default=30_720, help="training tokens")
    ap.add_argument("--cache-tokens", type=int, default=None, help="cached positions (default --tokens)")
    ap.add_argument("--eval-tokens", type=int, default=4096, help="held-out positions (a second cache)")
    ap.add_argument("--layers", default="0,6,12,18,24,29", help="layers to train (PLT layers are independent)")
    ap.add_argument("--json", type=Path, default=None, help="append one JSON line per variant here")
    args = ap.parse_args()

    import torch

    from circuits.models import load_model
    from circuits.training.activations import activation_cache_dir, cache_activations
    from circuits.corpora.sequences import corpus_sequences
    from circuits.models.registry import SMOLLM2_JUMPRELU_PLT
    from transcoders.activation_cache import build_activation_cache, cache_matches
    from transcoders.activation_source import ModelActivationSource
    from circuits.training.train import ModelLayers, source_id_for

    torch.set_num_threads(1)
    loaded = load_model(args.model, progress=False)
    base = SMOLLM2_JUMPRELU_PLT.updated(dict(tokens=args.tokens, threads=1))  # variants are relative to it
    cpu0 = time.process_time()
    cache = cache_activations(loaded, base, args.cache_tokens or args.tokens, args.corpus, progress=False)
    seqs, corpus_id = corpus_sequences(loaded, args.corpus, base.seq_len, heldout=True)
    heldout = activation_cache_dir(loaded, base, corpus_id + ":heldout")
    arch = base.transcoder
    if not cache_matches(heldout, source_id_for(loaded, corpus_id) + ":heldout", arch.input_hook, arch.output_hook,
                         args.eval_tokens, base.seq_len, base.cache_dtype):
        live = ModelActivationSource(ModelLayers(loaded.model, base.activation_dtype), seqs, arch.input_hook,
                                     arch.output_hook, base.seq_len, base.model_batch, 4096)
        build_activation_cache(live, args.eval_tokens, heldout, source_id_for(loaded, corpus_id) + ":heldout",
                               seq_len=base.seq_len)
    print(f"activation caches {cache}, {heldout}: {time.process_time() - cpu0:.1f} CPU s (0 when reused)", flush=True)
    layers = [int(v) for v in args.layers.split(",")]
    print(f"layers {layers}, {args.tokens} training tokens, {args.eval_tokens} held-out positions", flush=True)
    print("| variant | CPU s | held-out FVU | L0/layer | dead | per-layer FVU | per-layer dead |\n|---|---|---|---|---|---|---|",
          flush=True)
    for spec in args.variants:
        name, settings = parse_variant(spec)
        row = train_layers(cache, heldout, base.updated(settings), layers)
        print(f"| {name} | {row['cpu_s']} | {row['fvu']:.3f} | {row['l0']:.1f} | {row['dead']:.1%} | "
              f"{' '.join(f'{v:.2f}' for v in row['fvu_per_layer'])} | "
              f"{' '.join(f'{v:.0%}' for v in row['dead_per_layer'])} |", flush=True)
        if args.json is not None:
            with args.json.open("a") as f:
                f.write(json.dumps({"variant": name, "settings": settings, "tokens": args.tokens,
                                    "layers": layers, **row}) + "\n")


if __name__ == "__main__":
    main()
