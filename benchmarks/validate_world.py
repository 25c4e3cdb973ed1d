"""Validation at scale on the built-in `world` model: prints the tables of `circuits validate`.

    python benchmarks/validate_world.py [--n 30] [--swaps 20] [--model world] [--json OUT.json]

Graph influence vs ablation effects (Spearman), two-hop swap success rate, replacement and
completeness scores; see circuits/studies/validate.py for what each number is.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from circuits.replacement.model import ReplacementModel
from circuits.studies.validate import format_validation, validate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30, help="prompts (half addition, half two-hop)")
    parser.add_argument("--top-k", type=int, default=10, help="feature nodes ablated per prompt")
    parser.add_argument("--swaps", type=int, default=20, help="two-hop swap pairs")
    parser.add_argument("--k", type=int, default=20, help="state features per swap side")
    parser.add_argument("--inhibit", type=float, default=-1.0, help="multiplier of the removed state features")
    parser.add_argument("--inject-scale", type=float, default=4.0, help="scale of the injected activations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="world")
    parser.add_argument("--transcoders", default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for tiny models)")
    parser.add_argument("--json", default=None, help="also write every row as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    setup = ReplacementModel.load(args.model, args.transcoders)
    result = validate(setup, n=args.n, seed=args.seed, top_k=args.top_k, n_swaps=args.swaps, k=args.k,
                      inhibit=args.inhibit, inject_scale=args.inject_scale,
                      progress=lambda row: print(f"  {row.prompt!r}: spearman {row.spearman:.2f}", file=sys.stderr))
    print(f"model {args.model}, transcoders {setup.transcoder_dir}, {time.perf_counter() - t0:.0f} s")
    print("\n".join(format_validation(result)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result.to_json(), f, indent=1)


if __name__ == "__main__":
    main()
