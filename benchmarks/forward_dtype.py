"""CPU seconds of the training forward (circuits.training.train.ModelLayers) on one batch of
random tokens: float32, bfloat16 autocast (the default PLTs' `activation_dtype`), bfloat16 weights.

    CIRCUITS_HOME=... python benchmarks/forward_dtype.py --model smollm2-135m --batch 16 --seq 128 --repeat 3

One thread; prints the median CPU seconds of each mode. Not a test.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from circuits.models.registry import load_model
    from circuits.training.train import ModelLayers

    model = load_model(args.model, progress=False).model
    tokens = torch.randint(100, min(model.cfg.d_vocab, 40000), (args.batch, args.seq))

    def median_cpu(reader) -> float:
        reader(tokens, "ln2.hook_normalized", "hook_mlp_out")  # warm-up
        times = []
        for _ in range(args.repeat):
            t0 = time.process_time()
            reader(tokens, "ln2.hook_normalized", "hook_mlp_out")
            times.append(time.process_time() - t0)
        return sorted(times)[len(times) // 2]

    n = args.batch * args.seq
    for name, reader in (("float32", ModelLayers(model, "float32")), ("bfloat16 autocast", ModelLayers(model, "bfloat16")),
                         ("bfloat16 weights", ModelLayers(copy.deepcopy(model).to(torch.bfloat16), "float32"))):
        secs = median_cpu(reader)
        print(f"{name:18s} {secs:7.3f} CPU s per {n} tokens ({1000 * secs / n:.3f} ms/token)")


if __name__ == "__main__":
    main()
