"""Our engine vs circuit-tracer on the same weights, tokenizer, transcoders and token ids.

    bash benchmarks/setup_reference.sh                       # once: circuit-tracer's own venv
    python benchmarks/make_fixture.py --out benchmarks/work/fixture   # or use any cached model
    python benchmarks/compare_reference.py --model-dir benchmarks/work/fixture/model \
        --transcoders benchmarks/work/fixture/clt-norm [--lengths 8,16,32,64] [--main-length 20]

Prints, per prompt length: wall time of each engine (attribution only, best of --repeat), the
ratio, peak RSS of each process, and max |A_ours - A_ref| / max |A_ref| over the nodes both graphs
have (ours has no error nodes at BOS; the reference's are identically zero there - checked).
Each engine runs in its own process, with the same thread count. Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"


def run(engine: str, python: str, args, tokens: list[int], out: Path) -> dict:
    script = HERE / ("our_runner.py" if engine == "ours" else "reference_runner.py")
    cmd = [python, str(script), "--model-dir", str(args.model_dir), "--transcoders", str(args.transcoders),
           "--tokens", ",".join(map(str, tokens)), "--out", str(out), "--repeat", str(args.repeat),
           "--threads", str(args.threads),
           "--batch-size", str(args.our_batch_size if engine == "ours" else args.ref_batch_size)]
    env = {**os.environ, "PYTHONPATH": str(HERE.parent) if engine == "ours" else ""}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    with np.load(out, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def adjacency_gap(ours: dict, ref: dict) -> float:
    """max |A_ours - A_ref| / max |A_ref| over rows (features, logits) x columns (features,
    errors at positions >= 1, tokens), after mapping nodes by identity."""
    L, P = int(ref["n_layers"]), int(ref["n_pos"])
    assert np.array_equal(ours["feature_nodes"], ref["feature_nodes"]), "different active features"
    assert np.array_equal(ours["logit_token_ids"], ref["logit_token_ids"]), "different logit targets"
    n_f, n_l = int(ref["n_feature_nodes"]), len(ref["logit_token_ids"])
    ref_err = n_f + np.array([l * P + c for l in range(L) for c in range(1, P)], dtype=np.int64)
    ref_bos_err = n_f + np.arange(L) * P
    ref_tok = n_f + L * P + np.arange(P)
    N_ref = ref["adjacency"].shape[0]
    ref_rows = np.concatenate([np.arange(n_f), np.arange(N_ref - n_l, N_ref)])
    ref_cols = np.concatenate([np.arange(n_f), ref_err, ref_tok])
    N_ours = ours["adjacency"].shape[0]
    our_rows = np.concatenate([np.arange(n_f), np.arange(N_ours - n_l, N_ours)])
    our_cols = np.arange(N_ours - n_l)
    A_ref = ref["adjacency"][np.ix_(ref_rows, ref_cols)]
    A_ours = ours["adjacency"][np.ix_(our_rows, our_cols)]
    assert np.abs(ref["adjacency"][:, ref_bos_err]).max() == 0, "reference has edges from BOS errors"
    return float(np.abs(A_ours - A_ref).max() / np.abs(A_ref).max())


def prompt_tokens(model_dir: Path, length: int, seed: int) -> list[int]:
    meta = json.loads((model_dir / "meta.json").read_text())
    cfg = json.loads((model_dir / "config.json").read_text())
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    bos = tok.token_to_id(meta["special_tokens"]["bos_token"])
    n_special = 8
    rng = np.random.default_rng(seed)
    return [bos] + rng.integers(n_special, cfg["d_vocab"], size=length - 1).tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, default=WORK / "fixture" / "model")
    ap.add_argument("--transcoders", type=Path, default=WORK / "fixture" / "clt-norm")
    ap.add_argument("--ref-python", default=str(WORK / "ct-venv" / "bin" / "python"))
    ap.add_argument("--lengths", default="8,16,32,64")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--our-batch-size", type=int, default=64)
    ap.add_argument("--ref-batch-size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    WORK.mkdir(exist_ok=True)
    rows = []
    print(f"{'tokens':>6} {'features':>8} {'ours s':>8} {'ref s':>8} {'speed-up':>8} "
          f"{'ours MiB':>9} {'ref MiB':>9} {'max|dA|/max|A|':>15}")
    for length in [int(x) for x in args.lengths.split(",")]:
        tokens = prompt_tokens(args.model_dir, length, args.seed)
        ours = run("ours", sys.executable, args, tokens, WORK / f"ours_{length}.npz")
        ref = run("ref", args.ref_python, args, tokens, WORK / f"ref_{length}.npz")
        gap = adjacency_gap(ours, ref)
        row = dict(tokens=length, features=int(ref["n_feature_nodes"]),
                   ours_s=float(ours["attribution_seconds"]), ref_s=float(ref["attribution_seconds"]),
                   ours_mib=float(ours["peak_rss_bytes"]) / 2**20, ref_mib=float(ref["peak_rss_bytes"]) / 2**20,
                   rel_gap=gap)
        rows.append(row)
        print(f"{length:>6} {row['features']:>8} {row['ours_s']:>8.3f} {row['ref_s']:>8.3f} "
              f"{row['ref_s'] / row['ours_s']:>7.1f}x {row['ours_mib']:>9.0f} {row['ref_mib']:>9.0f} {gap:>15.2e}",
              flush=True)
    (WORK / "compare_reference.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
