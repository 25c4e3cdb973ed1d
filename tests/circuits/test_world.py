"""The built-in model organism `world`: corpus facts, held-out sets, tokenizer, build, cache."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from circuits.errors import CircuitsError
from circuits.models.world.corpus import (ADD_RANGE, ONE_HOP_TEMPLATES, TWO_HOP_TEMPLATES,
                                          addition_example, make_corpus)
from circuits.models.world.facts import CITY_STATE, PLAYER_TEAM, STATE_CAPITAL, TEAM_CITY, player_state
from circuits.models.world.tokenizer import (MAX_NUMBER, NUMBER_OFFSET, UNK, build_vocab,
                                             make_tokenizer, number_token_id)

EVAL_KEYS = {"addition_heldout_acc", "one_hop_acc", "two_hop_acc", "two_hop_heldout_acc"}
KOBE = "Fact: the capital of the state where Kobe Bryant played basketball is"
DALLAS = "Fact: the capital of the state containing Dallas is"


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(0)


# ---- corpus ---------------------------------------------------------------------------------

def test_world_tables_are_large_enough_and_consistent():
    assert len(STATE_CAPITAL) >= 12 and len(CITY_STATE) >= 30
    assert len(TEAM_CITY) >= 12 and len(PLAYER_TEAM) >= 40
    assert {"Texas": "Austin", "California": "Sacramento", "New York": "Albany"}.items() <= STATE_CAPITAL.items()
    assert CITY_STATE["Dallas"] == "Texas" and CITY_STATE["Oakland"] == "California"
    assert TEAM_CITY["Lakers"] == "Los Angeles" and PLAYER_TEAM["Kobe Bryant"] == "Lakers"
    assert set(CITY_STATE.values()) <= set(STATE_CAPITAL)
    assert set(TEAM_CITY.values()) <= set(CITY_STATE)
    assert set(PLAYER_TEAM.values()) == set(TEAM_CITY)
    assert player_state("Kobe Bryant") == "California"


def test_corpus_lines_state_the_facts(corpus):
    texts = {e.text for e in corpus.train_examples()}
    assert "calc: 36+59=95" in texts
    assert f"{DALLAS} Austin" in texts
    assert f"{KOBE} Sacramento" in texts
    assert "Fact: the capital of Texas is Austin" in texts
    assert "Fact: Kobe Bryant played basketball for the Lakers" in texts
    assert all(len(t) == 3 for t in ONE_HOP_TEMPLATES.values())
    assert len(corpus.one_hop) == 3 * (len(STATE_CAPITAL) + len(CITY_STATE) + len(TEAM_CITY) + len(PLAYER_TEAM))
    for e in corpus.addition_train + corpus.addition_heldout:
        a, b = map(int, e.prompt[len("calc: "):-1].split("+"))
        assert int(e.answer) == a + b


def test_heldout_addition_pairs_are_never_trained(corpus):
    pairs = [(a, b) for a in ADD_RANGE for b in ADD_RANGE]
    held = set(map(tuple, corpus.heldout_pairs))
    assert len(held) >= 0.10 * len(pairs)
    assert all((b, a) in held for a, b in held)  # both orders, so commutativity cannot leak
    assert (36, 59) not in held
    train_prompts = {e.prompt for e in corpus.train_examples()}
    assert not any(addition_example(a, b).prompt in train_prompts for a, b in held)
    assert {e.prompt for e in corpus.addition_heldout} == {addition_example(a, b).prompt for a, b in held}
    trained_sums = {int(e.answer) for e in corpus.addition_train}
    assert trained_sums == set(range(2 * ADD_RANGE.start, 2 * ADD_RANGE.stop - 1))


def test_heldout_two_hop_keeps_its_one_hop_facts(corpus):
    assert corpus.two_hop_heldout and corpus.two_hop_train
    train_prompts = {e.prompt for e in corpus.train_examples()}
    one_hop = {e.text for e in corpus.one_hop}
    for e in corpus.two_hop_heldout:
        assert e.prompt not in train_prompts
        if e.kind == "two_hop/city_capital":
            city = e.prompt[len(DALLAS) - len("Dallas is"):-len(" is")]
            state = CITY_STATE[city]
            assert f"Fact: the state containing {city} is {state}" in one_hop
            assert f"Fact: the capital of {state} is {e.answer}" in one_hop
    assert DALLAS not in {e.prompt for e in corpus.two_hop_heldout}
    assert KOBE not in {e.prompt for e in corpus.two_hop_heldout}
    assert set(TWO_HOP_TEMPLATES) == {e.kind.split("/")[1] for e in corpus.two_hop_train}


def test_corpus_is_seeded(corpus):
    again = make_corpus(0)
    assert again.heldout_pairs == corpus.heldout_pairs and again.train_examples() == corpus.train_examples()
    assert make_corpus(1).heldout_pairs != corpus.heldout_pairs


# ---- tokenizer ------------------------------------------------------------------------------

def test_tokenizer_splits_words_numbers_and_punctuation(corpus):
    vocab = build_vocab([e.text for e in corpus.all_examples()])
    tok = make_tokenizer(vocab)
    assert tok.encode("calc: 36+59=").tokens == ["calc", ":", "36", "+", "59", "="]
    for n in range(MAX_NUMBER + 1):
        assert tok.encode(str(n)).ids == [number_token_id(n)] == [NUMBER_OFFSET + n]
    for e in corpus.all_examples():
        enc = tok.encode(e.text)
        assert UNK not in enc.tokens
        assert tok.decode(enc.ids).split() == enc.tokens  # token-level round trip
    assert tok.encode("calc: Gotham").tokens[-1] == UNK


def test_loaded_tokenizer_prepends_bos_once(world_tiny):
    model = world_tiny.model
    assert model.to_str_tokens("calc: 36+59=") == ["<bos>", "calc", ":", "36", "+", "59", "="]
    assert model.to_str_tokens(KOBE)[0] == "<bos>" and model.to_str_tokens(KOBE)[1] == "Fact"
    from circuits.replacement.prompts import tokenize_prompt

    with pytest.raises(CircuitsError, match="Gotham"):
        tokenize_prompt(model, "Fact: the capital of the state containing Gotham is")


# ---- model and build ------------------------------------------------------------------------

def test_world_tiny_is_a_four_layer_layernorm_model(world_tiny):
    cfg = world_tiny.model.cfg
    assert cfg.n_layers >= 4 and cfg.normalization_type == "LN"
    assert world_tiny.meta["special_tokens"]["bos_token"] == "<bos>"
    assert world_tiny.meta["corpus"]["facts"]["state_capital"]["Texas"] == "Austin"


@pytest.mark.parametrize("prompts", [
    [KOBE, DALLAS + " Austin"],  # only BOS shared
    ["calc: 36+59=95", "calc: 12+13=25", "calc: 99+10=109"],  # `BOS calc :` shared
])
def test_fused_training_forward_equals_transformer_lens(world_tiny, prompts):
    from circuits.models.world.fused import answer_residuals

    model = world_tiny.model
    width = min(len(model.to_tokens(p)[0]) for p in prompts)
    tokens = torch.stack([model.to_tokens(p)[0, :width] for p in prompts])
    mask = torch.rand(tokens.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    mask[:, :4] = False
    mask[:, -1] = True
    with torch.no_grad():
        reference = model(tokens, stop_at_layer=model.cfg.n_layers)[mask]
        assert torch.allclose(answer_residuals(model, tokens, mask), reference, atol=1e-5)


def test_evaluate_world_reports_the_four_accuracies(world_tiny):
    from circuits.models.world import evaluate_world

    acc = evaluate_world(world_tiny)
    assert set(acc) == EVAL_KEYS and all(0.0 <= v <= 1.0 for v in acc.values())
    for key, value in world_tiny.meta["eval"].items():  # the build's eval, from the cached files
        assert abs(acc[key] - value) <= 0.01  # (thread counts may flip a near-tie)


def test_cli_build_and_predict_world_tiny(world_tiny):
    from circuits.cli.main import app

    runner = CliRunner()
    result = runner.invoke(app, ["models", "build", "world-tiny", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["name"] == "world-tiny" and out["build_seconds"] > 0 and set(out["eval"]) == EVAL_KEYS
    result = runner.invoke(app, ["models", "predict", "world-tiny", "calc: 36+59=", "--json", "--top", "3"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 3 and rows[0]["prob"] >= rows[1]["prob"]


def test_tiny_build_is_deterministic(world_tiny, tmp_path):
    from circuits.models.world import build_world

    meta = build_world(tmp_path, variant="world-tiny", progress=False)
    rebuilt = load_file(str(tmp_path / "model.safetensors"))
    cached = load_file(str(world_tiny.path / "model.safetensors"))
    assert rebuilt.keys() == cached.keys()
    assert all(torch.equal(rebuilt[k], cached[k]) for k in cached)
    assert meta["eval"] == world_tiny.meta["eval"]
    assert (tmp_path / "tokenizer.json").read_text() == (world_tiny.path / "tokenizer.json").read_text()


@pytest.mark.parametrize("damage", ["weights", "config", "meta"])
def test_corrupted_cache_gives_one_line_with_the_rebuild_command(world_tiny, tmp_path, monkeypatch, damage):
    from circuits.models import load_model

    home = tmp_path / "home"
    shutil.copytree(world_tiny.path, home / "models" / "world-tiny")
    monkeypatch.setenv("CIRCUITS_HOME", str(home))
    target = home / "models" / "world-tiny" / {"weights": "model.safetensors", "config": "config.json",
                                                "meta": "meta.json"}[damage]
    target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])
    with pytest.raises(CircuitsError) as info:
        load_model("world-tiny", build=False)
    message = str(info.value)
    assert "\n" not in message and "circuits models build world-tiny --force" in message


# ---- the full organism (minutes) ------------------------------------------------------------

@pytest.mark.slow
def test_world_meets_its_accuracy_targets():
    from circuits.models import load_model
    from circuits.replacement.prompts import next_token_distribution

    loaded = load_model("world", progress=False)
    acc = loaded.meta["eval"]
    assert acc["addition_heldout_acc"] >= 0.95
    assert acc["one_hop_acc"] >= 0.98
    assert acc["two_hop_acc"] >= 0.95
    assert loaded.meta["build_seconds"] <= 600
    assert next_token_distribution(loaded.model, "calc: 36+59=", 1)[0]["token"] == "95"
    assert next_token_distribution(loaded.model, DALLAS, 1)[0]["token"] == "Austin"
    assert next_token_distribution(loaded.model, KOBE, 1)[0]["token"] == "Sacramento"
