"""Case studies and validation: hand-built cases with known answers, and the demos end to end on
world-tiny (with a random CLT, and once through the CLI with the default CLT trained on first use)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from circuits.studies.experiments import decide, run_experiment, trace_answer
from circuits.studies.demos.operand_roles import OPERANDS, classify, eta_squared
from circuits.studies.state_features import StateFeatureFinder, two_hop_queries
from circuits.studies.swap_trials import SwapRow, swap_grid, swap_pairs
from circuits.errors import CircuitsError
from circuits.interventions import Intervention
from circuits.replacement.prompts import token_id, tokenize_prompt
from circuits.studies.validate import PromptRow, linear_effects, spearman, summarise
from tests.graphs.hand_graph import F0, F1, F2, L0, L1, hand_graph

VERDICT = "verdict ["


pytestmark = pytest.mark.usefixtures("one_thread")


# --- hand-built cases ---------------------------------------------------------------------------
def test_spearman_on_known_rankings():
    assert spearman([1, 2, 3, 4, 5], [2, 4, 6, 8, 10]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [9, 4, 1, 0]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [1, 4, 9]) == pytest.approx(1.0)  # ranks, not values
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 - 6*2/(4*15)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(CircuitsError):
        spearman([1, 2], [1, 2, 3])


def test_linear_effects_on_the_hand_graph():
    """F2 (act 1.5) -> L0 weight 2; F0 (act 2) -> F2 weight 2; F1 (act 1) -> F2 weight -1.
    Ablating F2 removes 2 from L0; ablating F0 moves F2 by -2, i.e. L0 by -2 * 2/1.5."""
    g = hand_graph()
    effects_l0 = linear_effects(g, L0)
    assert effects_l0[F2] == pytest.approx(-2.0)
    assert effects_l0[F0] == pytest.approx(-8 / 3)
    assert effects_l0[F1] == pytest.approx(4 / 3)
    effects_l1 = linear_effects(g, L1)  # only F1 feeds L1 (weight 1)
    assert effects_l1.tolist() == pytest.approx([0.0, -1.0, 0.0])


def _grid(fn):
    a, b = np.meshgrid(OPERANDS, OPERANDS, indexing="ij")
    return fn(a, b).astype(np.float32)


def test_operand_roles_recover_planted_properties():
    ones_a = classify(_grid(lambda a, b: 2.0 * (a % 10 == 6)), 36, 59)
    assert (ones_a.property, ones_a.category, ones_a.label) == ("ones(a)", "ones digit", "_6 (ones digit of 36)")
    assert ones_a.eta2 == pytest.approx(1.0)
    tens_sum = classify(_grid(lambda a, b: 1.0 * ((a + b) // 10 == 9)), 36, 59)
    assert (tens_sum.property, tens_sum.label) == ("tens(sum)", "sum ~9x")
    lookup = classify(_grid(lambda a, b: 1.0 * ((a % 10 == 6) & (b % 10 == 9))), 36, 59)
    assert lookup.label == "_6+_9 lookup"
    noise = classify(np.random.default_rng(0).random((90, 90)).astype(np.float32), 36, 59)
    assert noise.category == "unclear"
    assert eta_squared(np.array([1.0, 1.0, 3.0, 3.0]), np.array([0, 0, 1, 1])) == pytest.approx(1.0)
    assert eta_squared(np.array([1.0, 3.0, 1.0, 3.0]), np.array([0, 0, 1, 1])) == pytest.approx(0.0)


def test_state_features_from_planted_activations():
    queries = [(f"t{i}", "Texas", "Austin") for i in range(3)] + [(f"c{i}", "California", "Sacramento") for i in range(3)]
    acts = np.zeros((6, 2, 4), dtype=np.float32)
    acts[:3, 1, 2] = [2.0, 1.5, 1.0]      # Texas only: the Texas feature
    acts[:, 0, 0] = 1.0                   # fires everywhere: no state feature
    acts[3:, 0, 3] = [1.0, 1.0, 0.0]      # California, 2 of 3 prompts
    acts[0, 0, 1] = 5.0                   # one Texas prompt only: fires on < half of Texas
    finder = StateFeatureFinder.from_activations(None, queries, acts)
    texas = finder.find("Texas")
    assert [(f.layer, f.feature) for f in texas] == [(1, 2)]
    assert texas[0].score == pytest.approx(1.5) and texas[0].firing == pytest.approx(1.0)
    assert [(f.layer, f.feature) for f in finder.find("California")] == [(0, 3)]
    # leaving out two California prompts leaves one where the feature is silent
    assert finder.find("California", exclude=("c0", "c1")) == []
    assert finder.find("Texas", allowed=np.zeros((2, 4))) == []


def test_verdict_rules():
    top = lambda *toks: [{"token": t, "prob": 0.0} for t in toks]  # noqa: E731
    assert decide("inhibit", "95", None, top("95"), top("95"), (0.8, 0.3), None)[0]          # p fell > 50%
    assert not decide("inhibit", "95", None, top("95"), top("95"), (0.8, 0.5), None)[0]      # fell 37%
    assert decide("inhibit", "95", None, top("95"), top("98"), (0.5, 0.45), None)[0]         # top changed
    assert decide("swap", "Austin", "Sacramento", top("Austin"), top(" Sacramento"), (0.9, 0.1), (0.0, 0.6))[0]
    assert not decide("swap", "Austin", "Sacramento", top("Austin"), top("Albany"), (0.9, 0.1), (0.0, 0.3))[0]
    assert not decide("swap", "Austin", "Sacramento", top("Sacramento"), top("Sacramento"), (0.1, 0.1), (0.8, 0.8))[0]


def test_swap_summary_counts():
    rows = [SwapRow("p", "q", "Texas", "California", clean, 5, 0.0, 2.0, 3, 3, ok, ctrl, "x")
            for clean, ok, ctrl in [(True, True, False), (True, False, False), (False, True, True), (True, True, False)]]
    prompts = [PromptRow("p", "two-hop", "Austin", True, dict.fromkeys(
        ("replacement", "completeness", "replacement_pruned", "completeness_pruned"), 0.5), 0.1)]
    s = summarise(prompts, [], rows)["swap"]
    assert (s["n_pairs"], s["success_rate"], s["n_clean_correct"]) == (4, 0.75, 3)
    assert s["success_rate_clean_correct"] == pytest.approx(2 / 3)
    assert s["control_success_rate"] == 0.25


# --- world-tiny ---------------------------------------------------------------------------------
# `setup`: world-tiny with a random CLT saved to disk (tests/circuits/conftest.py)


def test_swap_with_a_planted_goal_feature_works_and_a_silent_one_does_not(setup):
    """A last-layer feature whose decoder is the (demeaned) unembedding of a capital the model does
    not predict: injecting it must make that capital the top token; a zero decoder changes nothing."""
    model, tc = setup.model, setup.transcoder
    L = model.cfg.n_layers
    tokens = tokenize_prompt(model, "Fact: the capital of the state containing Dallas is")
    with torch.no_grad():
        top = int(model(tokens[None])[0, -1].argmax())
    goal_text = next(c for c in ("Sacramento", "Albany") if token_id(model, c) != top)
    goal = token_id(model, goal_text)
    direction = model.W_U[:, goal] - model.W_U.mean(1)
    saved = tc.W_dec[L - 1][:2].clone()
    try:
        with torch.no_grad():
            tc.W_dec[L - 1][0, 0] = 50.0 * direction / direction.norm()
            tc.W_dec[L - 1][1, 0] = 0.0
        hit = run_experiment(setup, tokens, "planted", [Intervention(L - 1, -1, 0, value=1.0)], "Austin",
                             goal=goal_text, kind="swap")
        miss = run_experiment(setup, tokens, "silent", [Intervention(L - 1, -1, 1, value=1.0)], "Austin",
                              goal=goal_text, kind="swap")
    finally:
        with torch.no_grad():
            tc.W_dec[L - 1][:2] = saved
    assert hit.worked and hit.top_after[0]["token"].strip() == goal_text and hit.p_goal_after > 5 * hit.p_goal_before
    assert not miss.worked and miss.p_goal_after == pytest.approx(miss.p_goal_before, abs=1e-6)
    assert "did not work" in miss.verdict_line() and "]: worked" in hit.verdict_line()


def test_addition_demo_end_to_end(setup):
    from circuits.studies.demos.addition import format_addition, run_addition_demo

    report = run_addition_demo(setup, top=6)
    lines = format_addition(report)
    verdicts = [line for line in lines if VERDICT in line]
    assert len(verdicts) == len(report.experiments) == 5
    assert all(re.search(r"\]: (worked|did not work) \(.+\)$", v) for v in verdicts)
    with torch.no_grad():
        logits = setup.model(tokenize_prompt(setup.model, "calc: 36+59=")[None])[0, -1]
    p95 = float(torch.softmax(logits, -1)[token_id(setup.model, "95")])
    for exp in report.experiments:
        if exp.changes:  # ran: the numbers are measured, and the verdict follows from them
            assert exp.p_answer_before == pytest.approx(p95, rel=1e-5)
            worked, _ = decide("inhibit", "95", None, exp.top_before, exp.top_after,
                               (exp.p_answer_before, exp.p_answer_after), None)
            assert exp.worked == worked
    shown = [f for feats in report.groups.values() for f in feats]
    assert len(shown) == 6 and all(f.role for f in shown)
    assert [f.influence for f in sorted(shown, key=lambda f: -f.influence)][0] > 0
    json.dumps(report.to_json(), allow_nan=False)


def test_two_hop_demo_end_to_end(setup):
    from circuits.studies.demos.two_hop import format_two_hop, run_two_hop_demo

    report = run_two_hop_demo(setup, k=3)
    lines = format_two_hop(report)
    assert sum(VERDICT in line for line in lines) == len(report.experiments) == 4
    assert [e.goal for e in report.experiments] == [None, "Sacramento", None, "Austin"]
    assert [c.state for c in report.checks] == ["California", "Texas"]
    for check in report.checks:
        assert check.verdict.startswith(("yes", "no"))
        assert all(p["kept"] or not p["reaches_capital"] for p in check.promoting)
    json.dumps(report.to_json(), allow_nan=False)


def test_validation_on_a_few_prompts(setup):
    from circuits.studies.validate import format_validation, validate

    result = validate(setup, n=4, top_k=4, n_swaps=2, grid=False)
    s = result.summary
    assert s["n_prompts"] == 4 and s["n_ablations"] == 16
    # the correlations are those of the ablation rows (scipy as the oracle) ...
    from scipy.stats import spearmanr

    rows = result.ablations
    for readout, attr in (("real", "actual"), ("frozen_norm", "actual_frozen_norm")):
        effects = [getattr(r, attr) for r in rows]
        assert s["spearman"][readout]["influence_vs_abs_effect"] == pytest.approx(
            spearmanr([r.influence for r in rows], np.abs(effects))[0])
        assert s["spearman"][readout]["predicted_vs_actual_signed"] == pytest.approx(
            spearmanr([r.predicted for r in rows], effects)[0])
    # ... each row's measured effect is what an x0 intervention through the public API does ...
    row = rows[0]
    after = setup.intervene(row.prompt, {row.id: "x0"})
    answer = token_id(setup.model, next(p.answer for p in result.prompts if p.prompt == row.prompt))
    demeaned = [lg[-1, answer].double() - lg[-1].double().mean() for lg in (after.logits_before, after.logits_after)]
    assert row.actual == pytest.approx(float(demeaned[1] - demeaned[0]), abs=1e-5)
    assert {p.kind for p in result.prompts} == {"addition", "two-hop"}
    # ... the score table aggregates the prompts' own trace scores ...
    for kind, table in s["scores"].items():
        for key, v in table.items():
            values = [p.scores[key] for p in result.prompts if kind == "all" or p.kind == kind]
            assert (v["min"], v["mean"], v["max"]) == pytest.approx((min(values), np.mean(values), max(values)))
    first = result.prompts[0]
    assert trace_answer(setup, first.prompt, first.answer).result.summary["scores"] == pytest.approx(first.scores)
    # ... and the swap rate counts the successful pairs
    assert s["swap"]["n_pairs"] == 2
    assert s["swap"]["success_rate"] == np.mean([r.success for r in result.swaps])
    assert any("spearman" in line for line in format_validation(result))
    grid = swap_grid(setup, 2, grid=[(3, 0.0, 1.0), (3, 0.0, 2.0)])
    assert [(g["k"], g["inject_scale"]) for g in grid] == [(3, 1.0), (3, 2.0)]
    assert all(g["success_rate"] in (0.0, 0.5, 1.0) and g["mean_removed"] <= 3 for g in grid)  # 2 pairs
    pairs = swap_pairs(two_hop_queries(), 5)
    assert len(pairs) == 5 and all(a[1] != b[1] for a, b in pairs)
    assert pairs == swap_pairs(two_hop_queries(), 5) != swap_pairs(two_hop_queries(), 5, seed=1)
    json.dumps(result.to_json(), allow_nan=False)


def test_cli_demo_and_validate(setup):
    from circuits.cli.main import app

    out = CliRunner().invoke(app, ["demo", "addition", "--model", "world-tiny", "--transcoders",
                                   str(setup.transcoder_dir), "--top", "3", "--device", "cpu"])
    assert out.exit_code == 0, out.output
    assert sum(VERDICT in line for line in out.output.splitlines()) == 5
    bad = CliRunner().invoke(app, ["demo", "two-hop", "--model", "world-tiny", "--transcoders", "/nonexistent"])
    assert bad.exit_code == 2 and bad.output.strip().count("\n") == 0


def test_demos_with_the_default_clt(world_tiny):
    """The full path a user takes: default CLT trained on first use (seconds for world-tiny), both
    demos and validate via the CLI."""
    from circuits.cli.main import app

    for args, n_experiments in ((["demo", "addition"], 5), (["demo", "two-hop"], 4)):
        out = CliRunner().invoke(app, [*args, "--model", "world-tiny", "--device", "cpu"])
        assert out.exit_code == 0, out.output
        assert sum(VERDICT in line for line in out.output.splitlines()) == n_experiments
    out = CliRunner().invoke(app, ["validate", "--model", "world-tiny", "--n", "4", "--top-k", "3",
                                   "--swaps", "2", "--json", "--device", "cpu"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    summary, rows = report["summary"], report["ablations"]
    from scipy.stats import spearmanr

    assert summary["spearman"]["real"]["influence_vs_abs_effect"] == pytest.approx(
        spearmanr([r["influence"] for r in rows], [abs(r["actual"]) for r in rows])[0])
