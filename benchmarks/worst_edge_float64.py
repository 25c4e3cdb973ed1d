"""Which engine is nearer the exact value on the largest edge gap of a compare_reference.py pair?

    python benchmarks/worst_edge_float64.py --ours benchmarks/work/long-ref/ours_64.npz \
        --ref benchmarks/work/long-ref/ref_64.npz [--model smollm2-135m] [--transcoders DIR]

Finds the entry where the two graphs differ most (compare_reference.compared_blocks, as
adjacency_gap compares them) and, when it is an edge from a token embedding to a layer-0 feature at the same
position (the case of the 64-token SmolLM2 pair: a path through the residual stream and block 0's
self-attention only), recomputes it in float64 from our forward's frozen quantities (norm scales,
the pattern's diagonal, weights):
    A = W_enc[f] . (e + sum_h A_h[p, p] (ln1(e) W_V_h) W_O_h) / s2[p],  ln1(e) = w1 e / s1[p]
(SmolLM2: RMS norms, PLT input at ln2.hook_normalized, no post-attention norm). Other cases exit
with one line. Prints both engines' values, the float64 value and each gap. Not a test.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ours", type=Path, required=True)
    ap.add_argument("--ref", type=Path, required=True)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--transcoders", type=Path,
                    default=Path(os.environ.get("CIRCUITS_HOME", Path.home() / ".cache/circuits"))
                    / "transcoders/smollm2-135m/default-plt")
    args = ap.parse_args()
    from compare_reference import compared_blocks

    o, r = dict(np.load(args.ours)), dict(np.load(args.ref))
    A_ours, A_ref, f_ref = compared_blocks(o, r)
    P = int(r["n_pos"])
    row, col = np.unravel_index(np.abs(A_ours - A_ref).argmax(), A_ours.shape)
    pos = col - (A_ours.shape[1] - P)  # the last P columns are the token embeddings
    if row >= len(f_ref) or pos < 0:
        raise SystemExit("the largest gap is not from a token embedding to a feature: not recomputed")
    layer, f_pos, index = map(int, r["feature_nodes"][f_ref[row]])
    print(f"largest gap: feature (layer {layer}, position {f_pos}, #{index}) <- token at {pos}: "
          f"ours {A_ours[row, col]:.7f}, circuit-tracer {A_ref[row, col]:.7f}")
    if layer != 0 or f_pos != pos:
        raise SystemExit("not a layer-0 feature read from its own position's token: not recomputed")
    from circuits.attention.loadings import pattern_diagonal
    from circuits.attribution.frozen_backward import FrozenBlocks
    from circuits.replacement.local import build_local_replacement
    from circuits.replacement.model import ReplacementModel

    rm = ReplacementModel.load(args.model, args.transcoders, "cpu", progress=False)
    rep = build_local_replacement(rm.model, rm.transcoder, torch.tensor(r["input_tokens"]))
    blocks = FrozenBlocks(rm.model)
    e = rep.embed_pos_d[pos].double()
    x1 = blocks.ln1_w[0].double() * e / rep.ln1_scale_layer_pos[0, pos].double()
    diag = pattern_diagonal(rep, 0)[:, pos].double()
    W_V, W_O = blocks.W_V_kv_d_e[0].double(), blocks.W_O_head_e_d[0].double()
    H, G = W_O.shape[0], W_V.shape[0]
    moved = sum(diag[h] * ((x1 @ W_V[h // (H // G)]) @ W_O[h]) for h in range(H))
    exact = float((e + moved) / rep.ln2_scale_layer_pos[0, pos].double() @ rm.transcoder.W_enc[0][index].double())
    for name, value in (("ours", A_ours[row, col]), ("circuit-tracer", A_ref[row, col])):
        print(f"{name}: {value:.7f}, off the float64 value {exact:.7f} by {abs(value - exact):.2e} "
              f"({abs(value - exact) / abs(exact):.2e} relative)")


if __name__ == "__main__":
    main()
