"""The one-hop and two-hop fact case studies (`circuits demo capitals`, `capitals-two-hop`) on
world-tiny with a random CLT: the same code paths as on SmolLM2, with their numbers recomputed
independently; and the BPE answer-token lookup they rely on."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from circuits.studies.demos.capitals import fact_set, run_capitals_demo, subject_position
from circuits.studies.demos.capitals_two_hop import run_capitals_two_hop
from circuits.studies.experiments import decide
from circuits.interventions import Intervention, intervene
from circuits.replacement.prompts import token_id

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def report(setup):
    return run_capitals_demo(setup)


def _p(setup, logits, word):
    return float(torch.softmax(logits.float(), -1)[token_id(setup.model, word)])


def test_facts_are_measured(setup, report):
    facts = fact_set("world-tiny")
    assert report.prompt == "Fact: the capital of Texas is" and report.answer.strip() == "Austin"
    assert len(report.accuracy) == len(facts.facts) > 5
    for row in report.accuracy:
        tokens = setup.tokens(facts.template.format(row["subject"]))
        with torch.no_grad():
            logits = setup.model(tokens[None])[0, -1]
        assert row["p_answer"] == pytest.approx(_p(setup, logits, row["answer"]), abs=1e-6)
        assert row["correct"] == (setup.tokenizer.decode([int(logits.argmax())]).strip() == row["answer"])


def test_path_runs_from_the_subject_token_to_the_answer(report):
    nodes = report.path["nodes"]
    assert len(nodes) >= 3, "the random CLT's graph has a feature path from 'Texas' to 'Austin'"
    assert nodes[0]["kind"] == "embedding" and nodes[0]["pos"] == report.subject_pos
    assert nodes[0]["token"].strip() == "Texas"
    assert nodes[-1]["kind"] == "logit" and "Austin" in nodes[-1]["label"]
    assert all(n["kind"] == "feature" for n in nodes[1:-1])
    assert all(a["layer"] < b["layer"] or b["kind"] == "logit" for a, b in zip(nodes[1:-1], nodes[2:-1]))
    assert report.path["weight"] == pytest.approx(float(np.prod(report.path["step_weights"])))
    assert 0 < report.path["weight"] <= 1


def test_experiments_are_measured_and_decided(setup, report):
    assert len(report.experiments) == 7
    tokens = setup.tokens(report.prompt)
    path_feats = [(n["layer"], n["pos"], int(n["id"].split(":")[2])) for n in report.path["nodes"] if n["kind"] == "feature"]
    first = report.experiments[0]
    assert [c["id"] for c in first.changes] == [f"{l}:{p}:{f}" for l, p, f in path_feats]
    again = intervene(setup, tokens, [Intervention(l, p, f, multiplier=-1.0) for l, p, f in path_feats])
    assert first.p_answer_after == pytest.approx(_p(setup, again.logits_after[-1], report.answer), abs=1e-6)
    assert "control" in first.note
    for exp in report.experiments:
        if not exp.changes:
            continue
        worked, reason = decide(exp.kind, exp.answer, exp.goal, exp.top_before, exp.top_after,
                                (exp.p_answer_before, exp.p_answer_after),
                                (exp.p_goal_before, exp.p_goal_after) if exp.goal else None)
        assert (worked, reason) == (exp.worked, exp.reason)
    swap_all, swap_all_last = report.experiments[4], report.experiments[6]
    assert swap_all.kind == "swap" and swap_all.goal.strip() == "Sacramento"
    assert all(int(c["id"].split(":")[1]) == report.subject_pos for c in swap_all.changes)
    last = len(tokens) - 1
    assert swap_all_last.changes and all(int(c["id"].split(":")[1]) == last for c in swap_all_last.changes)
    # the ladder: the every-feature swap's note gives p(goal) for the k strongest of each side, k below half the changes
    from circuits.studies.demos.capitals import LADDER

    for exp in (swap_all, swap_all_last):
        ks = [k for k in LADDER if k < len(exp.changes) // 2]
        steps = [part.split(":")[0] for part in exp.note.split(": ", 1)[1].split(", ")] if ks else []
        assert steps == [f"k={k}" for k in ks]
    assert swap_all_last.note.startswith("p(Sacramento)")


def test_reference_patch_is_the_other_prompts_mlp_outputs(setup, report):
    assert list(report.reference) == ["subject token", "last token"]
    with torch.no_grad():
        clean = setup.model(setup.tokens(report.prompt)[None])[0, -1]
    for ref in report.reference.values():
        assert ref["p_answer"][0] == pytest.approx(_p(setup, clean, report.answer), abs=1e-6)
        assert ref["p_goal"][0] == pytest.approx(_p(setup, clean, report.other_answer), abs=1e-6)
        assert ref["p_answer"][1] != pytest.approx(ref["p_answer"][0], abs=1e-9)   # the patch changed the run
        assert ref["explained_share"] is not None and ref["explained_share"] <= 1.0
    json.dumps(report.to_json(), allow_nan=False)


def test_two_hop_check_on_world_tiny(setup):
    rep = run_capitals_two_hop(setup, prompts=[("Fact: the capital of the state containing Dallas is", "Texas", "Austin")])
    case = rep.cases[0]
    assert case.intermediate_features, "the random CLT has Texas-specific features at 'Texas'"
    assert all(f["margin"] > 0 for f in case.intermediate_features)
    wanted = {(f["layer"], f["feature"]) for f in case.intermediate_features}
    assert all((e["layer"], int(e["id"].split(":")[2])) in wanted for e in case.in_graph)
    on_path = [e for e in case.in_graph if e["reaches_answer"]]
    assert case.verdict.startswith(("yes", "weak")) == bool(on_path)
    assert case.verdict.startswith("yes") == (bool(on_path) and case.experiment.worked)
    assert case.verdict.split(":")[0] in ("yes", "weak", "no", "partly")
    json.dumps(rep.to_json(), allow_nan=False)


def test_subject_position(setup):
    tokens = setup.tokens("Fact: the capital of Texas is")
    assert setup.tokenizer.decode([int(tokens[subject_position(setup.model, tokens, "Texas")])]).strip() == "Texas"


def test_cli_capitals(setup):
    from circuits.cli.main import app

    out = CliRunner().invoke(app, ["demo", "capitals", "--model", "world-tiny", "--transcoders", str(setup.transcoder_dir)])
    assert out.exit_code == 0, out.output
    assert out.output.count("verdict [") == 7
    assert "strongest path from the subject token" in out.output


def test_cli_real_model_without_a_trained_transcoder_is_one_line():
    from circuits.cli.main import app

    out = CliRunner().invoke(app, ["demo", "capitals", "--model", "smollm2-135m"])
    assert out.exit_code == 2
    lines = [line for line in out.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: no trained default transcoder for smollm2-135m")
    assert "circuits transcoders train --model smollm2-135m" in lines[0]


def test_token_id_reads_bpe_leading_spaces():
    """' Paris' is 'ĠParis' in a byte-level vocabulary that also has 'Paris': the spaced text must
    give the spaced token, not the bare word."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"ĠParis": 0, "Paris": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    model = SimpleNamespace(tokenizer=PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]"))
    assert token_id(model, " Paris") == 0
    assert token_id(model, "Paris") == 1
    assert token_id(model, "ĠParis") == 0


def test_trace_summary_groups_features_and_prints_the_path(setup):
    """`circuits trace` prints each position's features with their layer, the features grouped over
    positions, and the strongest token -> top-logit path, whose ids are the summary's."""
    from circuits.cli.main import app
    from circuits.trace import trace_prompt

    prompt = "Fact: the capital of Texas is"
    out = CliRunner().invoke(app, ["trace", prompt, "--model", "world-tiny", "--transcoders", str(setup.transcoder_dir)])
    assert out.exit_code == 0, out.output
    result = trace_prompt(setup, prompt)
    summary, g, pruned = result.summary, result.graph, result.pruned
    assert summary["path"] is not None and summary["features"]
    assert "top features over all positions" in out.output and "strongest path to" in out.output
    for node in summary["path"]["nodes"][1:-1]:
        assert f"-> {node['layer']}:{node['position']}:{node['feature']}" in out.output
    for group in summary["features"]:
        nodes = np.flatnonzero(pruned.node_mask & (g.layer == group["layer"]) & (g.feature == group["feature"])
                               & (g.kind == 0))
        assert group["positions"] == sorted(g.position[nodes].tolist())
        assert group["influence"] == pytest.approx(float(pruned.node_influence[nodes].sum()))
    sums = [group["influence"] for group in summary["features"]]
    assert sums == sorted(sums, reverse=True)


def test_cached_default_transcoder_dir_is_found_only_when_finished(tmp_path, monkeypatch):
    from circuits.training.defaults import cached_default_transcoder_dir, default_transcoder_dir

    monkeypatch.setenv("CIRCUITS_HOME", str(tmp_path))
    assert cached_default_transcoder_dir("smollm2-135m") is None
    folder = default_transcoder_dir("smollm2-135m")
    folder.mkdir(parents=True)
    assert cached_default_transcoder_dir("smollm2-135m") is None      # a folder without config.yaml
    (folder / "config.yaml").write_text("model_kind: transcoder_set\n")
    assert cached_default_transcoder_dir("smollm2-135m") == folder
