"""Fixtures shared by the intervention and demo tests: a tiny model + transcoder pair and a prompt's
tokens; world-tiny with a random CLT saved to disk."""

from __future__ import annotations

import pytest

from tests.circuits.test_interventions import make_tiny_pair


@pytest.fixture(scope="module")
def pair(one_thread):
    return make_tiny_pair()


@pytest.fixture(scope="module")
def tokens(pair):
    from circuits.replacement.prompts import tokenize_prompt

    return tokenize_prompt(pair[0], "fact : the capital of the state containing dallas is")


@pytest.fixture(scope="module")
def setup(world_tiny, tmp_path_factory):
    """world-tiny with a random CLT (48 features) saved to disk, as a ReplacementModel."""
    from circuits.features.store import load_feature_index
    from circuits.replacement.model import ReplacementModel
    from tests.circuits.attribution_checks import random_transcoder
    from transcoders.formats import save_transcoder

    cfg = world_tiny.model.cfg
    tc = random_transcoder(cfg.n_layers, cfg.d_model, "clt", n_features=48, seed=11, threshold=0.5)
    folder = save_transcoder(tc, tmp_path_factory.mktemp("demo_tc") / "clt", model_name="world-tiny")
    return ReplacementModel(world_tiny, tc, folder, load_feature_index(folder))


@pytest.fixture
def graph_npz(tmp_path):
    """The hand-made test graph saved as a full .npz (what `circuits prune` and friends read)."""
    from graphs import save_graph
    from tests.graphs.hand_graph import hand_graph

    path = tmp_path / "g.npz"
    save_graph(hand_graph(), path)
    return path
