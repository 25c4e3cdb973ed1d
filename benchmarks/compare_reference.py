"""Our engine vs circuit-tracer on the same weights, tokenizer, transcoders and token ids.

    bash benchmarks/setup_reference.sh                       # once: circuit-tracer's own venv
    # the random fixture (random token ids):
    python benchmarks/make_fixture.py --out benchmarks/work/fixture
    python benchmarks/compare_reference.py --lengths 8,16,32,64
    # a real model (English text, see PASSAGE) with its transcoders, capped, alternating runs:
    python benchmarks/compare_reference.py --model-dir ~/.cache/circuits/models/smollm2-135m \
        --transcoders DIR --prompt text --lengths 6,16,64,256 --max-feature-nodes 7500 \
        --batch-size 64 --threads 1 --repeat 3 --repeat-for 256=1 --out-dir benchmarks/work/smollm2-plt
    # long prompts (issue 19): our engine at its default 4 GB budget, circuit-tracer stopped at
    # 12 GiB resident or after 20 minutes (recorded as stopped):
    python benchmarks/compare_reference.py --model-dir ~/.cache/circuits/models/smollm2-135m \
        --transcoders DIR --prompt doc --lengths 256 --max-feature-nodes 2816 --our-memory-gb 4 \
        --threads 1 --repeat 1 --stop-at-gb 12 --stop-after-s 1200 --out-dir benchmarks/work/long-ref-256
    python benchmarks/compare_reference.py --table benchmarks/work/smollm2-plt/results.json [more.json ...]
    # a pair run by hand with the two runners (same arguments): into --out-dir's results.json
    python benchmarks/compare_reference.py --out-dir DIR --import-pair ours.npz ref.npz

Each run is a fresh process (benchmarks/our_runner.py in our environment,
benchmarks/reference_runner.py in the reference venv) with the same batch size, thread count and
feature cap; the engines alternate (ours first on even repeats, the reference first on odd ones; the count
goes on from the pairs of that length already in --out-dir's results.json).
Every run is appended to results.json as soon as it ends, so a long series can be stopped and its
table printed with --table. The table reports medians over the repeats of: attribution wall time,
its CPU time (all threads), the whole process's wall time (imports and setup included), peak RSS;
and, over the nodes both graphs have, max |A_ours - A_ref| and that divided by max |A_ref|.
With a cap both engines choose features by influence; the two choices can differ at the margin,
so the feature overlap is printed and edges are compared on the shared features (an edge is a
direct effect: it does not depend on which other features were chosen). Our graph has no error
nodes at BOS; the reference's are checked to be zero. Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"

# English prose written for this benchmark (no external source); its first tokens are the Paris
# prompt, so the 6-token prompt (BOS included) is "The capital of France is".
PASSAGE = (
    "The capital of France is Paris. The capital of Germany is Berlin, and the capital of Italy is "
    "Rome. Most travellers reach Paris by train, and the fastest trains from London take a little "
    "over two hours. The city is divided by the river Seine into a northern bank and a southern bank, "
    "and more than thirty bridges cross it. In the middle of the river there are two islands; the "
    "larger one holds the old cathedral, which was damaged by a fire some years ago and has since "
    "been rebuilt. Every morning the bakeries open before sunrise, and by seven o'clock there is a "
    "queue outside most of them. A loaf of bread costs about one euro, and many families buy two: "
    "one for breakfast and one for dinner. The museums are crowded in summer, so people who live in "
    "the city prefer to visit them in winter, when the days are short and the streets are quiet. "
    "On Sundays the markets sell fruit, cheese, fish and flowers, and the sellers call out their "
    "prices to anyone who walks past. If you ask a stranger for directions, they will usually answer "
    "politely, especially if you begin with a greeting in French. At night the lights along the river "
    "are reflected in the water, and the boats carry visitors past the towers and domes of the old "
    "town until well after midnight. The next morning the whole thing starts again."
)


def run(engine: str, python: str, args, tokens: list[int], out: Path) -> dict:
    script = HERE / ("our_runner.py" if engine == "ours" else "reference_runner.py")
    batch = args.our_batch_size if engine == "ours" else args.ref_batch_size
    cmd = [python, str(script), "--model-dir", str(args.model_dir), "--transcoders", str(args.transcoders),
           "--tokens", ",".join(map(str, tokens)), "--out", str(out), "--repeat", "1",
           "--threads", str(args.threads), "--batch-size", str(batch or args.batch_size)]
    if args.max_feature_nodes:
        cmd += ["--max-feature-nodes", str(args.max_feature_nodes)]
    if args.hf_checkpoint:
        cmd += ["--hf-checkpoint"]
    if engine == "ours" and args.our_memory_gb:
        cmd += ["--memory-gb", str(args.our_memory_gb)]
    env = {**os.environ, "PYTHONPATH": str(HERE.parent) if engine == "ours" else args.ref_pythonpath}
    t0 = time.perf_counter()
    limit = args.stop_at_gb * 2**30 if args.stop_at_gb else None
    peak, stopped = _run_watched(cmd, env, limit, args.stop_after_s)
    wall = time.perf_counter() - t0
    if stopped:
        return {"stopped_gib": peak / 2**30, "stopped_because": stopped, "subprocess_seconds": wall}
    with np.load(out, allow_pickle=False) as z:
        res = {k: z[k] for k in z.files}
    res["subprocess_seconds"] = wall
    return res


def _run_watched(cmd: list[str], env: dict, limit: float | None, seconds: float | None) -> tuple[int, str]:
    """Run cmd; with a memory limit or a time limit, poll its resident memory (children included)
    and kill it once past either (a run that would swap, be killed by the kernel on a shared
    machine, or outlast the session). Returns (the largest resident memory seen, 0 without limits;
    why it was stopped, "" when it finished)."""
    if limit is None and seconds is None:
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        return 0, ""
    import psutil

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    watched, peak, t0 = psutil.Process(proc.pid), 0, time.perf_counter()
    while proc.poll() is None:
        try:
            rss = sum(p.memory_info().rss for p in [watched, *watched.children(recursive=True)])
        except psutil.Error:
            rss = 0
        peak = max(peak, rss)
        over = (f"resident memory above {limit / 2**30:g} GiB" if limit is not None and rss > limit else
                f"still running after {seconds:g} s" if seconds is not None and time.perf_counter() - t0 > seconds
                else "")
        if over:
            proc.kill()
            proc.wait()
            return peak, over
        time.sleep(0.2)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return peak, ""


def _feature_map(ours_nodes: np.ndarray, ref_nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices (into ours, into ref) of the feature nodes both graphs have, in ref order."""
    ours_at = {tuple(r): i for i, r in enumerate(ours_nodes.tolist())}
    pairs = [(ours_at[tuple(r)], j) for j, r in enumerate(ref_nodes.tolist()) if tuple(r) in ours_at]
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    o, r = zip(*pairs)
    return np.array(o, np.int64), np.array(r, np.int64)


def compared_blocks(ours: dict, ref: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A_ours, A_ref, the shared features' rows in ref's feature_nodes): both adjacencies over rows
    (shared features, logits) x columns (shared features, errors at positions >= 1, tokens), nodes
    mapped by identity."""
    L, P = int(ref["n_layers"]), int(ref["n_pos"])
    assert np.array_equal(ours["logit_token_ids"], ref["logit_token_ids"]), "different logit targets"
    f_ours, f_ref = _feature_map(ours["feature_nodes"], ref["feature_nodes"])
    n_f_ref, n_f_ours, n_l = int(ref["n_feature_nodes"]), int(ours["n_feature_nodes"]), len(ref["logit_token_ids"])
    ref_err = n_f_ref + np.array([l * P + c for l in range(L) for c in range(1, P)], dtype=np.int64)
    ref_bos_err = n_f_ref + np.arange(L) * P
    ref_tok = n_f_ref + L * P + np.arange(P)
    N_ref, N_ours = ref["adjacency"].shape[0], ours["adjacency"].shape[0]
    ref_rows = np.concatenate([f_ref, np.arange(N_ref - n_l, N_ref)])
    ref_cols = np.concatenate([f_ref, ref_err, ref_tok])
    our_rows = np.concatenate([f_ours, np.arange(N_ours - n_l, N_ours)])
    our_cols = np.concatenate([f_ours, np.arange(n_f_ours, N_ours - n_l)])  # errors (pos >= 1), tokens
    assert np.abs(ref["adjacency"][:, ref_bos_err]).max() == 0, "reference has edges from BOS errors"
    return (ours["adjacency"][np.ix_(our_rows, our_cols)], ref["adjacency"][np.ix_(ref_rows, ref_cols)], f_ref)


def adjacency_gap(ours: dict, ref: dict) -> dict:
    """Max |A_ours - A_ref| (absolute and over max |A_ref|) over compared_blocks."""
    A_ours, A_ref, f_ref = compared_blocks(ours, ref)
    diff = float(np.abs(A_ours - A_ref).max())
    return dict(abs_gap=diff, rel_gap=diff / float(np.abs(A_ref).max()), shared_features=len(f_ref),
                ours_features=int(ours["n_feature_nodes"]), ref_features=int(ref["n_feature_nodes"]))


def prompt_tokens(model_dir: Path, length: int, seed: int, kind: str) -> list[int]:
    cfg = json.loads((model_dir / "config.json").read_text())
    if "bos_token_id" in cfg and not (model_dir / "meta.json").exists():  # a transformers checkpoint
        rng = np.random.default_rng(seed)
        return [int(cfg["bos_token_id"])] + rng.integers(8, cfg["vocab_size"], size=length - 1).tolist()
    meta = json.loads((model_dir / "meta.json").read_text())
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    bos = tok.token_to_id(meta["special_tokens"]["bos_token"])
    if kind in ("text", "doc"):  # doc: long_context.py's document (Python's docstrings), for long prompts
        if kind == "doc":
            from long_context import document
        ids = tok.encode(PASSAGE if kind == "text" else document(), add_special_tokens=False).ids
        if len(ids) < length - 1:
            raise SystemExit(f"the {kind} has {len(ids)} tokens, fewer than {length - 1}")
        return [bos] + ids[: length - 1]
    n_special = 8
    rng = np.random.default_rng(seed)
    return [bos] + rng.integers(n_special, cfg["d_vocab"], size=length - 1).tolist()


def _median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def summarise(runs: list[dict]) -> list[dict]:
    """One row per prompt length: medians over that length's finished pairs of runs, per engine."""
    # a pair's second run carries its edge gap; runs of a pair that did not finish are left out
    runs = [r for i, r in enumerate(runs) if "abs_gap" in r or (i + 1 < len(runs) and "abs_gap" in runs[i + 1])]
    table = []
    for length in sorted({r["tokens"] for r in runs}):
        mine = [r for r in runs if r["tokens"] == length]
        ours = [r for r in mine if r["engine"] == "ours"]
        ref = [r for r in mine if r["engine"] == "ref"]
        gaps = [r for r in mine if "abs_gap" in r]
        if not ours or not ref:
            continue
        row = dict(tokens=length, runs=min(len(ours), len(ref)), active=ref[-1]["n_active"],
                   cap=ref[-1].get("cap"), batch=ref[-1].get("batch_size"),
                   ref_features=ref[-1]["n_features"], shared=gaps[-1]["shared_features"] if gaps else None)
        for name, rs in (("ours", ours), ("ref", ref)):
            for key in ("attr_s", "attr_cpu_s", "process_s", "peak_gib"):
                row[f"{name}_{key}"] = _median(rs, key)
        row["abs_gap"] = max((g["abs_gap"] for g in gaps), default=float("nan"))
        row["rel_gap"] = max((g["rel_gap"] for g in gaps), default=float("nan"))
        table.append(row)
    return table


def print_table(table: list[dict]) -> None:
    head = ("| tokens | active features | cap / batch | features ref / shared | runs | attribution wall s "
            "ours / ref | CPU s ours / ref | process wall s ours / ref | peak RSS GiB ours / ref | "
            "max abs diff | max rel diff |")
    print(head)
    print("|" + "---:|" * (head.count("|") - 1))
    for r in table:
        print(f"| {r['tokens']} | {r['active']} | {r['cap'] or 'all'} / {r['batch']} | {r['ref_features']} / "
              f"{r['shared']} | {r['runs']} | {r['ours_attr_s']:.1f} / {r['ref_attr_s']:.1f} "
              f"({r['ref_attr_s'] / r['ours_attr_s']:.1f}x) | {r['ours_attr_cpu_s']:.1f} / {r['ref_attr_cpu_s']:.1f} "
              f"({r['ref_attr_cpu_s'] / r['ours_attr_cpu_s']:.1f}x) | {r['ours_process_s']:.0f} / "
              f"{r['ref_process_s']:.0f} | {r['ours_peak_gib']:.2f} / {r['ref_peak_gib']:.2f} | "
              f"{r['abs_gap']:.1e} | {r['rel_gap']:.1e} |", flush=True)


def record(engine: str, length: int, rep: int, res: dict) -> dict:
    meta = json.loads(str(res["meta_json"]))
    return dict(engine=engine, tokens=length, repeat=rep, n_active=int(res["n_active_features"]),
                cap=meta.get("max_feature_nodes_arg") or meta.get("max_feature_nodes"),
                n_features=int(res["n_feature_nodes"]), attr_s=float(res["attribution_seconds"]),
                attr_cpu_s=float(res["attribution_cpu_seconds"]), setup_s=float(res["setup_seconds"]),
                process_s=float(res["subprocess_seconds"]), peak_gib=float(res["peak_rss_bytes"]) / 2**30,
                threads=meta.get("threads"), batch_size=meta.get("batch_size"),
                phases=meta.get("timing") or (meta.get("phase_seconds") or [None])[-1],
                finished_utc=time.strftime("%H:%M:%S", time.gmtime()), load_avg=os.getloadavg()[0])


def _repeats(args) -> dict[int, int]:
    out = {}
    for item in filter(None, args.repeat_for.split(",")):
        length, n = item.split("=")
        out[int(length)] = int(n)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, default=WORK / "fixture" / "model")
    ap.add_argument("--transcoders", type=Path, default=WORK / "fixture" / "clt-norm")
    ap.add_argument("--ref-python", default=str(WORK / "ct-venv" / "bin" / "python"))
    ap.add_argument("--prompt", choices=("random", "text", "doc"), default="random",
                    help="random token ids (fixture), the first tokens of PASSAGE, or of long_context.py's "
                         "document (Python's docstrings, for long prompts) (real models)")
    ap.add_argument("--lengths", default="8,16,32,64", help="prompt lengths in tokens, BOS included")
    ap.add_argument("--repeat", type=int, default=2, help="runs per engine and length (fresh processes)")
    ap.add_argument("--repeat-for", default="", help="per-length overrides, e.g. 256=1")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64, help="both engines' batch size")
    ap.add_argument("--our-batch-size", type=int, default=None, help="override for our engine")
    ap.add_argument("--ref-batch-size", type=int, default=None, help="override for circuit-tracer")
    ap.add_argument("--max-feature-nodes", type=int, default=None, help="both engines' cap (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--our-memory-gb", type=float, default=None,
                    help="our engine's memory budget (default: none, every row kept as the reference does)")
    ap.add_argument("--stop-at-gb", type=float, default=None,
                    help="kill a run whose resident memory passes this (recorded as stopped there)")
    ap.add_argument("--stop-after-s", type=float, default=None,
                    help="kill a run still going after this many seconds (recorded as stopped)")
    ap.add_argument("--hf-checkpoint", action="store_true",
                    help="--model-dir is a transformers checkpoint: circuit-tracer's nnsight backend (random ids)")
    ap.add_argument("--ref-pythonpath", default="",
                    help="PYTHONPATH for the reference runner (e.g. a folder with an nnsight its backend imports)")
    ap.add_argument("--out-dir", type=Path, default=WORK)
    ap.add_argument("--table", type=Path, nargs="+", default=None, help="print the table of results.json files and exit")
    ap.add_argument("--import-pair", type=Path, nargs=2, metavar=("OURS_NPZ", "REF_NPZ"), default=None,
                    help="add one pair of runner outputs made separately (same arguments) to --out-dir's results.json")
    args = ap.parse_args()
    if args.table:
        print_table(summarise([run for path in args.table for run in json.loads(path.read_text())]))
        return
    args.out_dir.mkdir(parents=True, exist_ok=True)
    results = args.out_dir / "results.json"
    runs = json.loads(results.read_text()) if results.exists() else []
    if args.import_pair:
        got = {}
        for engine, path in zip(("ours", "ref"), args.import_pair):
            with np.load(path, allow_pickle=False) as z:
                got[engine] = {k: z[k] for k in z.files}
            got[engine]["subprocess_seconds"] = float(got[engine]["process_seconds"])
            runs.append(record(engine, int(got[engine]["n_pos"]), 0, got[engine]) | {"imported": str(path)})
        runs[-1].update(adjacency_gap(got["ours"], got["ref"]))
        results.write_text(json.dumps(runs, indent=1))
        print_table(summarise(runs))
        return
    repeats = _repeats(args)
    for length in [int(x) for x in args.lengths.split(",")]:
        tokens = prompt_tokens(args.model_dir, length, args.seed, args.prompt)
        done = sum(1 for r in runs if r["tokens"] == length and "abs_gap" in r)  # pairs already in results.json
        for rep in range(done, done + repeats.get(length, args.repeat)):
            order = ("ours", "ref") if rep % 2 == 0 else ("ref", "ours")
            got = {}
            for engine in order:
                python = sys.executable if engine == "ours" else args.ref_python
                got[engine] = run(engine, python, args, tokens, args.out_dir / f"{engine}_{length}.npz")
                if "stopped_gib" in got[engine]:
                    runs.append({"engine": engine, "tokens": length, "rep": rep, **got[engine]})
                    results.write_text(json.dumps(runs, indent=1))
                    print(f"{length} tokens, {engine}: stopped ({got[engine]['stopped_because']}) after "
                          f"{got[engine]['subprocess_seconds']:.1f} s, peak {got[engine]['stopped_gib']:.2f} GiB "
                          f"resident", flush=True)
                    continue
                runs.append(record(engine, length, rep, got[engine]))
                results.write_text(json.dumps(runs, indent=1))
                r = runs[-1]
                print(f"{length} tokens, {engine}: attribution {r['attr_s']:.1f} s (CPU {r['attr_cpu_s']:.1f} s), "
                      f"process {r['process_s']:.1f} s, peak {r['peak_gib']:.2f} GiB, "
                      f"{r['n_features']}/{r['n_active']} features, load {r['load_avg']:.1f}", flush=True)
            if any("stopped_gib" in g for g in got.values()):
                continue
            gap = adjacency_gap(got["ours"], got["ref"])
            runs[-1].update(gap)
            results.write_text(json.dumps(runs, indent=1))
            print(f"{length} tokens: max abs diff {gap['abs_gap']:.2e}, rel {gap['rel_gap']:.2e}, "
                  f"shared features {gap['shared_features']} (ours {gap['ours_features']}, "
                  f"ref {gap['ref_features']})", flush=True)
            del got
    print_table(summarise(runs))


if __name__ == "__main__":
    main()
