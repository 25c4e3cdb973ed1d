"""Fixtures for the viewer tests: world-tiny graphs, an in-process server, headless Chromium.

Chromium and chromedriver come from Debian (`chromium`, `chromium-driver`), installed by the
README's test command; a machine without them fails these tests with a message saying so.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

from circuits.viewer.app import ViewerState, create_app

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER = ("/usr/bin/chromedriver",)


def schema(name: str) -> dict:
    """A Neuronpedia schema from shared/formats (beside the repository, or above a worktree)."""
    for folder in [REPO, *REPO.parents]:
        path = folder / "shared" / "formats" / name
        if path.is_file():
            return json.loads(path.read_text())
    pytest.fail(f"shared/formats/{name} not found beside the repository")


class RunningServer:
    """The viewer app served by uvicorn in a thread, on a free loopback port."""

    def __init__(self, state: ViewerState):
        import uvicorn

        from circuits.viewer.server import bind, url_of

        self.state = state
        sock = bind("127.0.0.1", 0)
        self.url = url_of(sock, "127.0.0.1")
        self.server = uvicorn.Server(uvicorn.Config(create_app(state), log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 10
        while not self.server.started and time.time() < deadline:
            time.sleep(0.02)
        assert self.server.started, "the viewer server did not start"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="session")
def tiny_bundle(world_tiny):
    """(LoadedModel, transcoder, transcoder_dir, identity) for world-tiny and its default CLT."""
    from circuits.replacement_model import ReplacementModel

    rm = ReplacementModel.load("world-tiny", None, "cpu", progress=False)
    return rm.loaded, rm.transcoder, rm.transcoder_dir, rm.identity


@pytest.fixture(scope="session")
def tiny_index(tiny_bundle):
    """A small feature index of world-tiny's default CLT (kept in memory, not saved)."""
    import torch

    from circuits.feature_index import build_feature_index
    from circuits.training.corpus import corpus_sequences, take_sequences

    loaded, tc, _, _ = tiny_bundle
    seqs, _ = corpus_sequences(loaded, None, seq_len=loaded.model.cfg.n_ctx)
    docs = [torch.tensor(s, dtype=torch.long) for s in take_sequences(seqs, 3000)]
    return build_feature_index(loaded.model, tc, docs, max_tokens=3000, k=5)


@pytest.fixture(scope="session")
def tiny_trace(tiny_bundle):
    from circuits.replacement_model import ReplacementModel

    loaded, tc, folder, _ = tiny_bundle
    return ReplacementModel(loaded, tc, folder).trace("calc: 36+59=")


@pytest.fixture(scope="session")
def graph_files(tiny_trace, tmp_path_factory):
    """The traced graph as viewer JSON and as a full .npz."""
    from graphs import save_graph, write_viewer_json

    folder = tmp_path_factory.mktemp("viewer_graphs")
    write_viewer_json(tiny_trace.graph, tiny_trace.pruned, folder / "calc.json")
    save_graph(tiny_trace.graph, folder / "calc.npz")
    return folder / "calc.json", folder / "calc.npz"


def _chromium_paths() -> tuple[str, str]:
    browser = next((p for p in CHROMIUM if Path(p).exists()), shutil.which("chromium"))
    driver = next((p for p in CHROMEDRIVER if Path(p).exists()), shutil.which("chromedriver"))
    if not browser or not driver:
        pytest.fail("browser tests need Debian's chromium and chromium-driver "
                    "(apt-get install -y chromium chromium-driver; the README's test command does it)")
    return browser, driver


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium driven by selenium: fresh profile, no background networking."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = _chromium_paths()
    profile = tempfile.mkdtemp(prefix="circuits-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--disable-default-apps", "--metrics-recording-only", "--window-size=1400,900",
                f"--user-data-dir={profile}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(30)
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
