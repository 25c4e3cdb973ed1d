"""A tiny Gemma-2 checkpoint and GemmaScope-2-layout skip transcoders (PLT and CLT), for
benchmarks/compare_reference.py with `--hf-checkpoint` (circuit-tracer's nnsight backend).

    python benchmarks/make_gemma2_skip_fixture.py --out benchmarks/work/gemma2
    python benchmarks/compare_reference.py --hf-checkpoint --ref-pythonpath NNSIGHT_0_6 \
        --model-dir benchmarks/work/gemma2/model --transcoders benchmarks/work/gemma2/plt-skip-norm \
        --lengths 8,16 --repeat 1 --out-dir benchmarks/work/skip-gemma2-plt

Writes OUT/model (transformers checkpoint; tokenizer_config names PreTrainedTokenizerFast so the
reference venv's older transformers reads it) and, per kind, the same weights (per-layer
params.safetensors: w_enc, w_dec, b_enc, b_dec, threshold, affine_skip_connection) under two
configs: OUT/{plt,clt}-skip read `mlp.hook_in` and write `mlp.hook_out` (GemmaScope-2's pair, issue
22's report; circuit-tracer 0.5.0's Gemma-2 nnsight mapping lacks these two hooks, so only our
ablation tests cover it), OUT/{plt,clt}-skip-norm read `ln2.hook_normalized` and write `hook_mlp_out`.
Runs in our environment (it uses the test helpers' checkpoint and layout writers).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    from tests.circuits.attribution_checks import random_transcoder
    from tests.helpers.published_transcoders import write_layout
    from tests.helpers.tiny_checkpoints import make_tiny_gemma2

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "work" / "gemma2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-features", type=int, default=64)
    args = ap.parse_args()
    model_dir = make_tiny_gemma2(args.out / "model", seed=args.seed)
    tok_cfg = model_dir / "tokenizer_config.json"
    cfg = json.loads(tok_cfg.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_cfg.write_text(json.dumps(cfg))
    n_layers, d = (json.loads((model_dir / "config.json").read_text())[k] for k in ("num_hidden_layers", "hidden_size"))
    for kind in ("plt", "clt"):
        ref = random_transcoder(n_layers, d, kind, n_features=args.n_features, skip=True, seed=args.seed + 1)
        with torch.no_grad():
            ref.W_skip.normal_(0, 0.2)
            ref.b_dec.normal_(0, 0.1)
        folder = write_layout(f"gemmascope2-{kind}", ref, args.out / f"{kind}-skip")
        norm = args.out / f"{kind}-skip-norm"
        shutil.copytree(folder, norm, dirs_exist_ok=True)
        config = yaml.safe_load((norm / "config.yaml").read_text())
        config.update(feature_input_hook="ln2.hook_normalized", feature_output_hook="hook_mlp_out")
        (norm / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"written: {args.out}/model, " + ", ".join(f"{k}-skip/, {k}-skip-norm/" for k in ("plt", "clt")))


if __name__ == "__main__":
    main()
