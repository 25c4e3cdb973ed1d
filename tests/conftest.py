"""Shared fixtures. Every test session gets its own $CIRCUITS_HOME, so tests never touch the
user's cache; the tiny built-in model is built once per session and shared."""

from __future__ import annotations

import os

import pytest
import torch

# Tests use tiny models: one thread is faster than two fighting over 2 cores (and CI has 2).
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """Pin one torch thread for a module (code under test may change it), restored afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session", autouse=True)
def circuits_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("circuits_home")
    old = os.environ.get("CIRCUITS_HOME")
    os.environ["CIRCUITS_HOME"] = str(home)
    torch.manual_seed(0)
    yield home
    if old is None:
        os.environ.pop("CIRCUITS_HOME", None)
    else:
        os.environ["CIRCUITS_HOME"] = old


@pytest.fixture(scope="session")
def world_tiny(circuits_home):
    """The `world-tiny` built-in model (trained in seconds), as a LoadedModel."""
    from circuits.models import load_model

    return load_model("world-tiny", progress=False)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An offline huggingface_hub cache (HF_HUB_OFFLINE=1, HF_HUB_CACHE=<tmp>) for the loader tests."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache
