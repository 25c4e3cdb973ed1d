"""The held-out learning curve (TrainConfig.eval_every_tokens): periodic scores of the transcoder as
it trains, on the same held-out positions the final fidelity report reads first."""

from __future__ import annotations

import json

import pytest

from circuits.corpora.sequences import corpus_sequences
from circuits.training.fidelity import HeldOutReconstruction, measure_fidelity
from circuits.training.train import train_for_model
from transcoders.loading import load_transcoder
from transcoders.train_config import TrainConfig

BASE = dict(kind="plt", n_features=32, tokens=6144, batch_size=256, buffer_tokens=2048, log_every=4,
            checkpoint_seconds=0, threads=1, eval_tokens=1024, eval_every_tokens=2048)


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_points_every_n_tokens_and_the_last_is_the_final_score(world_tiny, tmp_path):
    log = tmp_path / "log.jsonl"
    res = train_for_model(world_tiny, TrainConfig.from_flat(BASE), tmp_path / "t", progress=False, log_path=log)
    points = [r for r in _lines(log) if "heldout" in r]
    assert [p["tokens"] for p in points] == [2048, 4096, 6144]  # every 2,048 tokens, the last after step 24
    assert points[0]["heldout"]["fvu_mean"] > points[-1]["heldout"]["fvu_mean"]  # it learned, held out
    # the last point scores the saved transcoder on the positions the final report reads: same FVU and L0
    final = res.metrics["fidelity"]
    assert points[-1]["heldout"]["n_tokens"] == final["n_tokens"]
    assert points[-1]["heldout"]["fvu_mean"] == pytest.approx(final["fvu_mean"], rel=1e-5)
    assert points[-1]["heldout"]["l0_total"] == pytest.approx(final["l0_total"], rel=1e-5)
    # its CPU is counted apart, cumulatively, on every line after the first point
    evals = [r["eval_cpu_s"] for r in _lines(log) if r["step"] > points[0]["step"]]
    assert evals and min(evals) > 0 and evals == sorted(evals)


def test_scorer_equals_measure_fidelity_reconstruction(world_tiny, tmp_path):
    train_for_model(world_tiny, TrainConfig.from_flat({**BASE, "eval_every_tokens": None}), tmp_path / "t",
                    progress=False, evaluate=False)
    tc = load_transcoder(tmp_path / "t")
    heldout, _ = corpus_sequences(world_tiny, None, 128, heldout=True)
    full = measure_fidelity(world_tiny.model, tc, heldout, max_tokens=700)
    score = HeldOutReconstruction(world_tiny.model, heldout, 700)
    first, again = score(tc), score(tc)  # activations collected once, then reused
    assert first == again
    for key in ("fvu_per_layer", "l0_per_layer", "dead_per_layer", "n_tokens"):
        assert first[key] == pytest.approx(full[key], rel=1e-5), key


def test_resumed_run_logs_each_point_once(world_tiny, tmp_path):
    log, out = tmp_path / "log.jsonl", tmp_path / "t"
    cfg = TrainConfig.from_flat(BASE)
    train_for_model(world_tiny, cfg, out, progress=False, log_path=log, stop_at_step=10, evaluate=False)
    train_for_model(world_tiny, cfg, out, progress=False, log_path=log, resume=True, evaluate=False)
    assert [p["tokens"] for p in _lines(log) if "heldout" in p] == [2048, 4096, 6144]
