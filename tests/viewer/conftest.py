"""Fixtures for the viewer tests: world-tiny graphs, an in-process server, headless Chromium.

Chromium and chromedriver come from Debian (`chromium`, `chromium-driver`), installed by the
README's test command; a machine without them fails these tests with a message saying so.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from circuits.errors import CircuitsError
from circuits.viewer.app import ViewerState, create_app
from circuits.viewer.headless import headless_chromium
from circuits.viewer.server import ServerThread

REPO = Path(__file__).resolve().parents[2]


def schema(name: str) -> dict:
    """A Neuronpedia schema, from the copies in tests/viewer/schemas (see its README)."""
    path = Path(__file__).parent / "schemas" / name
    if not path.is_file():
        pytest.fail(f"{path} is missing")
    return json.loads(path.read_text())


class RunningServer(ServerThread):
    """The viewer serving `state` in a thread."""

    def __init__(self, state: ViewerState):
        self.state = state
        super().__init__(create_app(state))


@pytest.fixture(scope="session")
def tiny_rm(world_tiny):
    """world-tiny and its default CLT, as a ReplacementModel."""
    from circuits.replacement.model import ReplacementModel

    return ReplacementModel.load("world-tiny", progress=False)


@pytest.fixture(scope="session")
def tiny_index(tiny_rm):
    """A small feature index of world-tiny's default CLT (kept in memory, not saved)."""
    import torch

    from circuits.features.index import build_feature_index
    from circuits.corpora.sequences import corpus_sequences, take_sequences

    seqs, _ = corpus_sequences(tiny_rm.loaded, None, seq_len=tiny_rm.model.cfg.n_ctx)
    docs = [torch.tensor(s, dtype=torch.long) for s in take_sequences(seqs, 3000)]
    return build_feature_index(tiny_rm.model, tiny_rm.transcoder, docs, max_tokens=3000, k=5)


@pytest.fixture(scope="session")
def tiny_trace(tiny_rm):
    return tiny_rm.trace("calc: 36+59=")


@pytest.fixture(scope="session")
def graph_files(tiny_trace, tmp_path_factory):
    """The traced graph as viewer JSON and as a full .npz."""
    from graphs import save_graph, write_viewer_json

    folder = tmp_path_factory.mktemp("viewer_graphs")
    write_viewer_json(tiny_trace.graph, tiny_trace.pruned, folder / "calc.json")
    save_graph(tiny_trace.graph, folder / "calc.npz")
    return folder / "calc.json", folder / "calc.npz"


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium driven by selenium: fresh profile, no background networking."""
    try:
        driver, profile = headless_chromium()
    except CircuitsError as err:
        pytest.fail(str(err))
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def requested_urls(driver) -> list[str]:
    """Every URL the page asked for since the last call (from Chrome's performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
