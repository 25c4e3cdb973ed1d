"""`circuits transcoders train --recipe NAME`: a built-in model's named training configs (first use's
and longer ones), refused in one line when unknown, and never mixed with another run's checkpoint."""

from __future__ import annotations

import pytest

from circuits.models.registry import BUILTIN_MODELS, FIRST_USE, SMOLLM2_PLT, recipe_config
from circuits.training.defaults import default_transcoder_dir
from tests.circuits.test_transcoders_cli import FAST, _one_error_line, run
from transcoders.checkpoint import CHECKPOINT_FILE
from transcoders.loading import load_transcoder


def test_long_recipes_change_only_the_budget_and_its_decay():
    for model in ("smollm2-135m", "gemma3-270m"):
        first, long = recipe_config(model, FIRST_USE), recipe_config(model, "long")
        assert first == BUILTIN_MODELS[model].transcoder_config
        changed = {k for k, v in long.flat().items() if first.flat()[k] != v}
        assert changed == {"activation_tokens", "tokens", "lr_decay_frac"}
        assert long.lr_decay_frac == 0.5
        assert long.activation_tokens == 3 * first.activation_tokens and long.tokens == 4 * long.activation_tokens
    assert recipe_config("smollm2-135m", FIRST_USE) == SMOLLM2_PLT


@pytest.fixture
def own_transcoders_dir(tmp_path, monkeypatch):
    """Default transcoders under tmp_path: the session's shared world-tiny default stays untouched."""
    monkeypatch.setattr("circuits.training.defaults.transcoders_dir", lambda: tmp_path / "transcoders")
    return tmp_path / "transcoders"


def test_unknown_recipe_is_one_line_naming_the_known_ones(circuits_home, own_transcoders_dir, tmp_path, capsys):
    code, _, err = run(["transcoders", "train", "--model", "world-tiny", "--recipe", "long", *FAST], capsys)
    assert code == 2 and "'world-tiny' has no recipe 'long'; it has: first-use" in _one_error_line(err)
    assert not default_transcoder_dir("world-tiny").exists()
    code, _, err = run(["transcoders", "train", "--model", str(tmp_path), "--recipe", "long", "--out",
                        str(tmp_path / "o"), *FAST], capsys)
    assert code == 2 and "--recipe is for built-in models" in _one_error_line(err)


def test_a_recipe_trains_the_default_and_refuses_another_runs_checkpoint(world_tiny, own_transcoders_dir, monkeypatch,
                                                                       capsys):
    small = recipe_config("world-tiny", FIRST_USE).updated(dict(n_features=16, tokens=4096, batch_size=256,
                                                                buffer_tokens=2048, log_every=4,
                                                                checkpoint_seconds=0))
    monkeypatch.setitem(BUILTIN_MODELS["world-tiny"].recipes, "short", small)
    out = default_transcoder_dir("world-tiny")
    assert out.is_relative_to(own_transcoders_dir)
    # an unfinished first-use run in the default folder: `--recipe short` must not resume it as its own
    from circuits.training.train import train_for_model

    train_for_model(world_tiny, small.updated(dict(tokens=8192)), out, progress=False, stop_at_step=4)
    assert (out / CHECKPOINT_FILE).exists()
    code, _, err = run(["transcoders", "train", "--model", "world-tiny", "--recipe", "short", "--no-progress"], capsys)
    assert code == 2 and "--tokens 4096 (checkpoint: 8192)" in _one_error_line(err)
    code, _, err = run(["transcoders", "train", "--model", "world-tiny", "--recipe", "short", "--overwrite",
                        "--no-progress", "--eval-tokens", "0"], capsys)
    assert code == 0, err
    assert load_transcoder(out).n_features == 16 and not (out / CHECKPOINT_FILE).exists()


def test_the_cli_resolves_a_recipe_with_the_options_given_beside_it(tmp_path):
    from circuits.cli.transcoders import resolve_config

    long = recipe_config("smollm2-135m", "long")
    assert resolve_config("smollm2-135m", tmp_path / "o", False, {}, "long") == long
    mixed = resolve_config("smollm2-135m", tmp_path / "o", False, {"lr": 1e-3, "threads": 1}, "long")
    assert (mixed.lr, mixed.threads, mixed.tokens) == (1e-3, 1, long.tokens)
    assert resolve_config("smollm2-135m", tmp_path / "o", False, {}, None) == SMOLLM2_PLT
