"""Shared sweeps on a real model: three prompts of different lengths traced one at a time and with
their rows in shared sweeps (circuits.attribution.batched, K = 3); prints the CPU seconds of each
and, per prompt, whether the nodes are identical and the largest edge difference relative to the
largest edge.

    python benchmarks/batched_equality_real.py [MODEL TRANSCODERS]
    (default: smollm2-135m and $CIRCUITS_HOME/transcoders/smollm2-135m/default-plt)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's circuits

PROMPTS = ["The capital of Texas is", "The capital of North Carolina is",
           "Fact: the capital of the state containing Dallas is"]


def main() -> None:
    import numpy as np
    import torch

    from circuits.attribution.batched import attribute_many
    from circuits.attribution.config import TraceConfig
    from circuits.attribution.engine import attribute
    from circuits.paths import circuits_home
    from circuits.replacement.model import ReplacementModel

    model = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m"
    tc = sys.argv[2] if len(sys.argv) > 2 else str(circuits_home() / "transcoders" / "smollm2-135m" / "default-plt")
    torch.set_num_threads(1)
    rm = ReplacementModel.load(model, tc, progress=False)
    print(f"load {os.getloadavg()[0]:.2f} at {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; tokens "
          f"{[len(rm.tokens(p)) for p in PROMPTS]}", flush=True)
    config = TraceConfig()
    t0 = time.process_time()
    singles = [attribute(rm, p, config) for p in PROMPTS]
    t1 = time.process_time()
    shared = list(attribute_many(rm, [(p, config) for p in PROMPTS], len(PROMPTS)))
    t2 = time.process_time()
    print(f"CPU s: one at a time {t1 - t0:.1f}, shared sweeps {t2 - t1:.1f}")
    for a, b in zip(singles, shared):
        same = all(np.array_equal(getattr(a, n), getattr(b, n)) for n in ("kind", "layer", "position", "feature"))
        A, B = a.dense_adjacency(), b.dense_adjacency()
        print(f"{a.prompt!r}: {a.n_nodes} nodes, same nodes {same}, max |edge diff| / max |edge| "
              f"{float(np.abs(A - B).max() / np.abs(A).max()):.2e}")
    print(f"load after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
