"""Dataset faithfulness: the ablated models are exact where they must be (nothing ablated = the
model; one feature ablated in the real model = an intervention), f(100%) = 1 under zero ablation,
the areas, the datasets, and the `circuits evaluate` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from circuits.batch.datasets import dataset
from circuits.cli.main import app
from circuits.interventions import Intervention, clean_run, intervene
from circuits.replacement.local import build_local_replacement
from circuits.studies import faithfulness as fa

PROMPT = "calc: 36+59="


@pytest.fixture(scope="module")
def prompt_state(setup, one_thread):
    rm = setup
    tokens = rm.tokens(PROMPT)
    rep = build_local_replacement(rm.model, rm.transcoder, tokens)
    clean = clean_run(rm.model, rm.transcoder, tokens)
    return rm, rep, clean


def test_nothing_ablated_is_the_model_in_both(prompt_state):
    rm, rep, clean = prompt_state
    shape = tuple(clean.acts_pos_layer_feat.shape)
    everything = fa.stack([fa.keep_masks(None, None, shape, "cpu")] * 2)
    zero = fa.zero_values(rm.transcoder, "cpu")
    truth = rm.model(rep.tokens[None])[0, -1].float()
    local = fa.local_logits(rm.model, rm.transcoder, rep, everything, zero)[1]
    real = fa.real_logits(rm.model, rm.transcoder, clean, everything, zero)[1]
    torch.testing.assert_close(local, truth, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(real, truth, rtol=1e-5, atol=1e-4)


def test_one_feature_ablated_in_the_real_model_is_that_intervention(prompt_state):
    rm, rep, clean = prompt_state
    f = rep.features
    i = int(torch.argmax(f.activation * (f.position > 0)))
    layer, pos, feat = int(f.layer[i]), int(f.position[i]), int(f.feature[i])
    shape = tuple(clean.acts_pos_layer_feat.shape)
    keep = fa.keep_masks(None, None, shape, "cpu")
    keep.features[pos, layer, feat] = False
    batch = fa.stack([fa.keep_masks(None, None, shape, "cpu"), keep])  # row 1 is the ablation
    got = fa.real_logits(rm.model, rm.transcoder, clean, batch, fa.zero_values(rm.transcoder, "cpu"))[1]
    want = intervene(rm, rep.tokens, [Intervention(layer, pos, feat, value=0.0)],
                     layers=(0, None), freeze_attention=False).logits_after[-1]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got - clean.logits_pos_vocab[-1]).abs().max() > 1e-3  # the ablation did something


def test_zero_ablation_curve_reaches_one_and_areas(setup, one_thread):
    rm = setup
    result = rm.trace(PROMPT, targets=["95"], contrast="94")
    rec = fa.evaluate_prompt(rm, result.graph, ("95",), "94", "logit-diff", None, ablations=("zero",))
    assert rec["target"].strip() == "95" and rec["contrast"].strip() == "94"
    for key in ("local/zero", "real/zero"):
        curve = rec["curves"][key]
        assert curve["f"][-1] == pytest.approx(1.0, abs=1e-4)  # the whole graph holds every active feature
        assert curve["cpr"] == pytest.approx(fa.area(fa.LEVELS, curve["f"]))
    assert rec["n_nodes"] == sorted(rec["n_nodes"]) and rec["n_nodes"][0] < rec["n_nodes"][-1]
    # areas of known curves: f = 1 everywhere (but at x = 0) and f = x
    ones = fa.curve_scores(fa.LEVELS, [1.0] * len(fa.LEVELS))
    assert ones["cpr"] == pytest.approx(1 - fa.LEVELS[0] / 2) and ones["cmd"] == pytest.approx(fa.LEVELS[0] / 2)
    line = fa.curve_scores(fa.LEVELS, list(fa.LEVELS))
    assert line["cpr"] == pytest.approx(0.5) and line["cmd"] == pytest.approx(0.5)


def test_datasets_are_reproducible_with_ground_truth():
    a, b = dataset("world-addition", 20, seed=3), dataset("world-addition", 20, seed=3)
    assert a == b and a != dataset("world-addition", 20, seed=4)
    for item in a:
        x, y = item.prompt.removeprefix("calc: ").removesuffix("=").split("+")
        assert item.targets == (str(int(x) + int(y)),) and item.contrast == str(int(x) + int(y) - 1)
    from circuits.models.world.facts import CITY_STATE, STATE_CAPITAL

    for item in dataset("world-two-hop", 10, seed=0):
        assert item.targets[0] in STATE_CAPITAL.values() and item.contrast != item.targets[0]
        city = next((c for c in CITY_STATE if f"containing {c} is" in item.prompt), None)
        if city is not None:
            assert item.targets[0] == STATE_CAPITAL[CITY_STATE[city]]


def test_induction_set_repeats_a_sequence_of_single_tokens(world_tiny):
    tok = world_tiny.model.tokenizer
    items = dataset("smollm2-induction", 3, seed=1, tokenizer=tok)
    for item in items:
        ids = tok.encode(item.prompt, add_special_tokens=False)
        k = (len(ids) + 1) // 2
        assert ids[:k - 1] == ids[k:] and tok.encode(item.targets[0], add_special_tokens=False) == [ids[k - 1]]


def test_evaluate_cli_writes_curves_summary_and_plot(setup, tmp_path, one_thread):
    out = tmp_path / "ev"
    result = CliRunner().invoke(app, ["evaluate", "--dataset", "world-addition", "--n", "3", "--model", "world-tiny",
                                      "--transcoders", str(setup.transcoder_dir), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{"):])
    assert set(summary["curves"]) == {"local/zero", "real/zero", "local/mean", "real/mean"}
    assert summary["n_prompts"] == 3
    records = [json.loads(x) for x in (out / "faithfulness.jsonl").read_text().splitlines()]
    cprs = [r["curves"]["real/zero"]["cpr"] for r in records]
    assert summary["curves"]["real/zero"]["cpr_mean"] == pytest.approx(np.mean(cprs))
    c, m_full = summary["curves"]["real/zero"], np.mean([r["m_full"] for r in records])
    m_empty = np.mean([r["curves"]["real/zero"]["m_empty"] for r in records])
    m_last = np.mean([r["curves"]["real/zero"]["m"][-1] for r in records])
    assert c["f_of_means"][-1] == pytest.approx((m_last - m_empty) / (m_full - m_empty))
    assert (out / "faithfulness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 3  # traced through trace-batch


def test_evaluate_needs_prompts_or_dataset(tmp_path):
    result = CliRunner().invoke(app, ["evaluate", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "give a prompts file or --dataset" in result.output
    result = CliRunner().invoke(app, ["evaluate", "--dataset", "nope", "--model", "world-tiny",
                                      "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "unknown dataset 'nope'" in result.output
