"""A cached model whose files were damaged is called corrupt (with the command that rebuilds it)
by `models list` and by every load, never "cached" and never a traceback."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from circuits.errors import CircuitsError
from circuits.models.cache import WEIGHTS_FILE, load_cached_model
from circuits.models.registry import list_models


@pytest.fixture
def home_with_copy(world_tiny, tmp_path, monkeypatch):
    """A private CIRCUITS_HOME holding a copy of the built world-tiny cache."""
    home = tmp_path / "home"
    shutil.copytree(world_tiny.path, home / "models" / "world-tiny")
    monkeypatch.setenv("CIRCUITS_HOME", str(home))
    return home / "models" / "world-tiny"


def _row():
    return next(r for r in list_models() if r["name"] == "world-tiny")


def test_wrong_tensor_shape_is_corrupt_in_list_and_load(home_with_copy):
    assert _row()["state"] == "cached" and _row()["cached"]
    weights = home_with_copy / WEIGHTS_FILE
    state = load_file(str(weights))
    key = next(k for k in state if k.endswith("W_in"))
    state[key] = torch.zeros(*state[key].shape[:-1], state[key].shape[-1] + 1)
    save_file(state, str(weights))
    row = _row()
    assert row["state"] == "corrupt" and not row["cached"] and key in row["problem"]
    with pytest.raises(CircuitsError, match=r"corrupted .*rebuild with: circuits models build world-tiny --force"):
        load_cached_model(home_with_copy, "world-tiny")


def test_truncated_weights_file_is_corrupt(home_with_copy):
    weights = home_with_copy / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    assert _row()["state"] == "corrupt"
    with pytest.raises(CircuitsError, match="is corrupted"):
        load_cached_model(home_with_copy, "world-tiny")


def test_a_folder_of_user_files_under_the_cache_name_is_never_replaced(tmp_path, monkeypatch):
    from circuits.models.registry import build_model

    monkeypatch.setenv("CIRCUITS_HOME", str(tmp_path))
    mine = tmp_path / "models" / "world-tiny"
    mine.mkdir(parents=True)
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(CircuitsError, match="did not write"):
        build_model("world-tiny", progress=False, force=True)
    assert (mine / "thesis.tex").read_text() == "years of work"


def test_list_checks_shapes_recorded_at_build_without_transformer_lens(home_with_copy):
    """`models list` compares the weights header with the shapes meta.json recorded at build time
    (no model is built, transformer_lens is not imported) while config.json is unchanged."""
    import json
    import os
    import subprocess
    import sys

    meta = json.loads((home_with_copy / "meta.json").read_text())
    assert meta["shapes"] and meta["config_sha256"]
    code = ("import sys; from circuits.models.registry import list_models; "
            "row = next(r for r in list_models() if r['name'] == 'world-tiny'); "
            "print(row['state'], 'transformer_lens' in sys.modules)")
    env = {**os.environ, "CIRCUITS_HOME": str(home_with_copy.parents[1])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["cached", "False"]


def test_an_edited_config_is_checked_against_the_weights(home_with_copy):
    """With config.json changed since the build, the shapes it implies are worked out again."""
    import json

    config = json.loads((home_with_copy / "config.json").read_text())
    config["d_mlp"] += 4
    (home_with_copy / "config.json").write_text(json.dumps(config))
    row = _row()
    assert row["state"] == "corrupt" and "its config implies" in row["problem"]
