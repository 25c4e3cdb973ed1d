"""`circuits view` on the command line and the JSON API without a browser: bad input is one line,
a busy port is refused, Ctrl-C stops cleanly, only the page's own files are served."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from circuits.cli.main import app as cli_app
from circuits.viewer.app import ViewerState, create_app
from graphs import prune_graph, save_graph, write_viewer_json
from tests.graphs.hand_graph import hand_graph

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hand_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hand")
    graph = hand_graph()
    write_viewer_json(graph, prune_graph(graph), folder / "hand.json")
    save_graph(graph, folder / "hand.npz")
    return folder / "hand.json", folder / "hand.npz"


def circuits(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "circuits", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr


@pytest.mark.parametrize("content, fragment", [
    ('{"metadata": {"prompt": "x"}, "nodes": [{"node_id"', "not valid JSON"),
    ("hello", "not valid JSON"),
    ('{"a": 1}', "not an attribution graph JSON"),
    ("PK\x03\x04 broken zip", "not a readable graph file"),
])
def test_view_bad_file_is_one_line(tmp_path, content, fragment):
    path = tmp_path / "bad.json"
    path.write_text(content)
    one_line_error(circuits("view", str(path)), fragment)


def _hand_doc(hand_files) -> dict:
    return json.loads(hand_files[0].read_text())


def _bad_node_id(doc: dict) -> dict:
    feature = next(n for n in doc["nodes"] if n["feature_type"] == "cross layer transcoder")
    feature["node_id"] = "7"  # no "_": was an IndexError
    return doc


@pytest.mark.parametrize("damage, fragment", [
    (lambda doc: '{"metadata": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    (lambda doc: {**doc, "metadata": {"model": json.loads("[" * 200 + "]" * 200)}}, "nested too deeply"),
    (_bad_node_id, "not of the form {layer}_{feature}_{pos}"),
    (lambda doc: {**doc, "metadata": "a string"}, "'metadata' must be an object"),
    (lambda doc: {**doc, "qParams": {"pinnedIds": [1, 2]}}, "qParams.pinnedIds"),
    (lambda doc: {**doc, "nodes": doc["nodes"] + ["x"]}, "must be an object"),
], ids=["deep", "deep-model", "node-id", "metadata-string", "qparams", "node-string"])
@pytest.mark.parametrize("export", [False, True], ids=["view", "export"])
def test_view_damaged_graph_is_one_line(hand_files, tmp_path, monkeypatch, damage, fragment, export):
    def serve_forever(*args, **kwargs):
        raise AssertionError("a damaged graph was served")

    monkeypatch.setattr("circuits.viewer.server.run", serve_forever)
    doc = damage(_hand_doc(hand_files))
    path = tmp_path / "bad.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    extra = ["--export-features", str(tmp_path / "pages")] if export else ["--port", "0"]
    result = CliRunner().invoke(cli_app, ["view", str(path), *extra])  # in-process: fast
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and fragment in lines[0], result.output


def test_view_fifo_refused_at_once(tmp_path):
    fifo = tmp_path / "g.json"
    os.mkfifo(fifo)
    result = circuits("view", str(fifo), "--port", "0", timeout=60)  # no writer: opening it would block
    one_line_error(result, "FIFO")


def test_view_missing_file_and_directory(tmp_path):
    one_line_error(circuits("view", str(tmp_path / "nope.json")), "no graph file")
    one_line_error(circuits("view", str(tmp_path)), "is a directory")


def test_view_port_in_use(hand_files):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        one_line_error(circuits("view", str(hand_files[0]), "--port", str(port)), f"port {port}")


def test_view_export_without_features(hand_files, tmp_path):
    one_line_error(circuits("view", str(hand_files[0]), "--export-features", str(tmp_path / "f")),
                   "no feature data")


def test_view_serves_until_ctrl_c(hand_files):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "circuits", "view", *map(str, hand_files), "--port", "0",
                             "--host", "0.0.0.0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("viewer at http://0.0.0.0:"), line
        port = int(line.split(":")[2].split("/")[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=10) as response:
            info = json.load(response)
        assert [g["name"] for g in info["graphs"]] == ["hand.json", "hand.npz"]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "viewer stopped" in out
    assert "warning: listening on 0.0.0.0" in err and "Traceback" not in err


def _started(argv: list[str]) -> tuple[subprocess.Popen, int]:
    """`python -m circuits ...argv --port 0` running, and its port (from its first line)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "circuits", *argv, "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    assert line.startswith("viewer at http://127.0.0.1:"), (line, proc.poll())
    return proc, int(line.split(":")[2].split("/")[0])


def _stopped_by_sigterm(proc: subprocess.Popen, port: int) -> None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=30) as response:
            assert response.status == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, (proc.returncode, err)
    assert out.strip().endswith("viewer stopped") and "Traceback" not in err


def test_view_sigterm_exits_0(hand_files):
    _stopped_by_sigterm(*_started(["view", str(hand_files[0])]))


def test_serve_sigterm_exits_0(tiny_rm):
    """`serve` with the world-tiny model (built by the fixture, in this session's CIRCUITS_HOME)."""
    _stopped_by_sigterm(*_started(["serve", "--model", "world-tiny", "--device", "cpu"]))


@pytest.fixture(scope="module")
def client(hand_files):
    state = ViewerState()
    for path in hand_files:
        state.shelf.open(path)
    app = create_app(state)
    return TestClient(app, base_url="http://127.0.0.1:8000", headers={"X-Circuits-Token": app.state.token})


def test_api_graph_and_node(client):
    doc = client.get("/api/graphs/g1").json()  # the .npz: pruned at 0.8 / 0.98 by default
    assert [n["node_id"] for n in doc["nodes"]] == ["0_3_1", "1_5_1", "0_-1_1", "E_11_1", "3_20_1", "3_21_1"]
    everything = client.get("/api/graphs/g1?node_threshold=1&edge_threshold=1").json()
    assert len(everything["nodes"]) == 8 and len(everything["links"]) == 11
    node = client.get("/api/graphs/g1/nodes/1_5_1").json()  # F2 <- F0 2.0, F1 -1.0, R0 1.0
    assert [(e["node_id"], e["weight"]) for e in node["inputs"]] == [("0_7_1", 2.0), ("0_3_1", -1.0), ("0_-1_1", 1.0)]
    assert [e["node_id"] for e in node["outputs"]] == ["3_20_1"]


@pytest.mark.parametrize("path, status, fragment", [
    ("/api/graphs/g9", 404, "unknown graph"),
    ("/api/graphs/g1/nodes/4_4_4", 404, "unknown node id '4_4_4'"),
    ("/api/graphs/g1?node_threshold=abc", 400, "must be a number"),
    ("/api/graphs/g1?node_threshold=2", 400, "must lie in (0, 1]"),
    ("/static/..%2f..%2fapp.py", 404, "/static/"),
    ("/static/%2e%2e/app.py", 404, "not found"),
    ("/../../etc/passwd", 404, "not found"),
    ("/api/features/0/1", 404, "no feature data"),
    ("/api/features/x/1", 400, "whole number"),
])
def test_api_errors_are_one_line_json(client, path, status, fragment):
    response = client.get(path)
    assert response.status_code == status
    assert fragment in response.json()["error"]


def test_api_live_endpoints_need_serve(client):
    response = client.post("/api/trace", json={"prompt": "calc: 1+2="})
    assert response.status_code == 409 and "circuits serve" in response.json()["error"]
    response = client.post("/api/trace", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 409)
    response = client.post("/api/trace", content=b"{not json")  # no JSON content type
    assert response.status_code == 415


def test_api_qparams_checked(client):
    bad = client.put("/api/graphs/g0/qparams", json={"pinnedIds": ["nope"], "supernodes": []})
    assert bad.status_code == 400 and "unknown node id 'nope'" in bad.json()["error"]
    good = client.put("/api/graphs/g0/qparams", json={"pinnedIds": ["1_5_1"], "supernodes": [["s", "1_5_1"]]})
    assert good.status_code == 200
    assert client.get("/api/graphs/g0").json()["qParams"]["supernodes"] == [["s", "1_5_1"]]


def test_page_allows_no_outside_source(client):
    response = client.get("/")
    assert response.status_code == 200 and "viewer.js" in response.text
    assert "default-src 'none'" in response.headers["content-security-policy"]
    for name in ("viewer.js", "viewer.css"):
        body = client.get(f"/static/{name}").text
        assert "http://" not in body.replace("http://www.w3.org/2000/svg", "") and "https://" not in body
