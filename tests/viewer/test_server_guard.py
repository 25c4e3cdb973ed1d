"""The servers against a hostile page or client (issue 22): DNS rebinding (Host header), cross-origin
requests that do work (content type, per-run token, Origin), oversized bodies and fields, qParams
off the schema, JSON nested too deeply. Real servers on loopback, ephemeral ports."""

from __future__ import annotations

import http.client
import json
import re

import jsonschema
import pytest

from circuits.viewer.app import MAX_BODY_BYTES, MAX_FIELD_CHARS, ViewerState, create_app
from circuits.viewer.live import LiveModel
from circuits.viewer.server import ServerThread
from graphs import prune_graph, write_viewer_json
from tests.graphs.hand_graph import hand_graph
from tests.viewer.conftest import RunningServer, schema


@pytest.fixture(scope="module")
def hand_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("guard") / "hand.json"
    graph = hand_graph()
    write_viewer_json(graph, prune_graph(graph), path)
    return path


@pytest.fixture(scope="module")
def view_server(hand_json):
    state = ViewerState()
    state.shelf.open(hand_json)
    server = RunningServer(state)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def live_server(tiny_rm):
    server = RunningServer(ViewerState(live=LiveModel(tiny_rm)))
    yield server
    server.stop()


def request(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
            host: str | None = None) -> tuple[int, dict | str]:
    """(status, JSON body or text) of one request; `host` replaces the Host header."""
    port = int(server.url.rsplit(":", 1)[1].strip("/"))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host if host is not None else f"127.0.0.1:{port}")
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        try:
            conn.endheaders(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered (and closed) before reading the whole body: read its answer
        response = conn.getresponse()
        text = response.read().decode()
    finally:
        conn.close()
    try:
        return response.status, json.loads(text)
    except ValueError:
        return response.status, text


def token_of(server) -> str:
    return server.app.state.token


def work_headers(server, **extra) -> dict:
    return {"Content-Type": "application/json", "X-Circuits-Token": token_of(server), **extra}


def port_of(server) -> int:
    return int(server.url.rsplit(":", 1)[1].strip("/"))


# ---- Host header (DNS rebinding) -----------------------------------------------------------
@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:{port}", "127.0.0.1.attacker.example:{port}",
                                  "localhost.:{port}", "", "127.0.0.1:{port}@evil"])
def test_foreign_host_refused(view_server, host):
    status, body = request(view_server, "GET", "/api/graphs/g0", host=host.format(port=port_of(view_server)))
    assert status in (400, 421)
    assert "nodes" not in body and "Host" in body["error"]


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}", "LOCALHOST:{port}",
                                  "localhost"])
def test_loopback_host_served(view_server, host):
    status, body = request(view_server, "GET", "/api/graphs/g0", host=host.format(port=port_of(view_server)))
    assert status == 200 and body["nodes"]


def test_named_host_served_only_when_given():
    server = ServerThread(create_app(ViewerState(), host="viewer.lab"))
    try:
        port = port_of(server)
        assert request(server, "GET", "/api/info", host=f"viewer.lab:{port}")[0] == 200
        assert request(server, "GET", "/api/info", host=f"localhost:{port}")[0] == 200
        assert request(server, "GET", "/api/info", host=f"other.lab:{port}")[0] == 421
    finally:
        server.stop()


# ---- requests that do work: JSON content type, per-run token, same origin ------------------
def test_page_carries_the_token(view_server):
    status, page = request(view_server, "GET", "/")
    assert status == 200
    assert re.search(r'<meta name="circuits-token" content="([^"]+)">', page).group(1) == token_of(view_server)
    assert len(token_of(view_server)) >= 32


def test_cross_origin_text_plain_trace_refused(live_server):
    """The form a page on another origin can send without a preflight: must start nothing."""
    body = json.dumps({"prompt": "calc: 1+2="}).encode()
    status, answer = request(live_server, "POST", "/api/trace", body,
                             {"Content-Type": "text/plain", "Origin": "http://attacker.example"})
    assert status == 403 and "origin" in answer["error"]
    for content_type in ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                         "multipart/form-data; boundary=x"):
        headers = {"Content-Type": content_type, "X-Circuits-Token": token_of(live_server)}
        status, answer = request(live_server, "POST", "/api/trace", body, headers)
        assert status == 415 and "application/json" in answer["error"]
    status, answer = request(live_server, "POST", "/api/trace", body, {"Content-Type": "application/json"})
    assert status == 403 and "token" in answer["error"]
    status, answer = request(live_server, "POST", "/api/trace", body,
                             work_headers(live_server, **{"X-Circuits-Token": "guess"}))
    assert status == 403
    status, answer = request(live_server, "POST", "/api/trace", body,
                             work_headers(live_server, Origin="http://attacker.example"))
    assert status == 403 and "origin" in answer["error"]
    assert live_server.state.jobs.list() == []  # nothing was started
    own = f"http://127.0.0.1:{port_of(live_server)}"
    change = {"layer": 0, "pos": 1, "feature": 0, "mode": "value", "amount": 2.0}
    status, answer = request(live_server, "POST", "/api/intervene",
                             json.dumps({"prompt": "calc: 1+2=", "changes": [change]}).encode(),
                             work_headers(live_server, Origin=own))
    assert status == 200 and answer["prompt"] == "calc: 1+2="


def test_qparams_put_needs_token(view_server):
    body = json.dumps({"pinnedIds": [], "supernodes": []}).encode()
    assert request(view_server, "PUT", "/api/graphs/g0/qparams", body, {"Content-Type": "application/json"})[0] == 403
    assert request(view_server, "PUT", "/api/graphs/g0/qparams", body, work_headers(view_server))[0] == 200


# ---- sizes and the qParams schema ----------------------------------------------------------
def test_oversized_body_refused(view_server):
    big = json.dumps({"pinnedIds": [], "clickedId": "x" * (MAX_BODY_BYTES + 10)}).encode()
    status, answer = request(view_server, "PUT", "/api/graphs/g0/qparams", big, work_headers(view_server))
    assert status == 413 and "too large" in answer["error"]


def test_chunked_oversized_body_refused(view_server):
    port = port_of(view_server)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest("PUT", "/api/graphs/g0/qparams", skip_host=True)
        conn.putheader("Host", f"127.0.0.1:{port}")
        for name, value in work_headers(view_server, **{"Transfer-Encoding": "chunked"}).items():
            conn.putheader(name, value)
        conn.endheaders()
        chunk = b"[" * 65536
        try:
            for _ in range(MAX_BODY_BYTES // len(chunk) + 2):
                conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            conn.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = conn.getresponse()
        assert response.status == 413
    finally:
        conn.close()


@pytest.mark.parametrize("qparams, fragment", [
    ({"clickedId": "x" * (MAX_FIELD_CHARS + 1)}, "clickedId"),
    ({"pinnedIds": ["99_99_99"]}, "unknown node id"),
    ({"clickedId": 5}, "clickedId"),
    ({"linkType": ["both"]}, "linkType"),
    ({"sg_pos": "x" * (MAX_FIELD_CHARS + 1)}, "sg_pos"),
    ({"pinnedIds": "1_5_1"}, "pinnedIds"),
    ({"supernodes": [["x" * (MAX_FIELD_CHARS + 1), "1_5_1"]]}, "supernode"),
    ({"somethingElse": 1}, "somethingElse"),
])
def test_qparams_off_schema_refused(view_server, qparams, fragment):
    status, answer = request(view_server, "PUT", "/api/graphs/g0/qparams", json.dumps(qparams).encode(),
                             work_headers(view_server))
    assert status == 400 and fragment in answer["error"]
    stored = view_server.state.shelf.get("g0").qparams
    assert len(json.dumps(stored)) < 10_000  # nothing oversized was kept


def test_stored_qparams_follow_the_schema(view_server):
    qparams = {"pinnedIds": ["1_5_1"], "supernodes": [["group", "1_5_1"]], "clickedId": "1_5_1",
               "linkType": "both", "sg_pos": ""}
    status, answer = request(view_server, "PUT", "/api/graphs/g0/qparams", json.dumps(qparams).encode(),
                             work_headers(view_server))
    assert status == 200
    jsonschema.validate(answer, schema("neuronpedia-graph-schema.json")["properties"]["qParams"])
    doc = request(view_server, "GET", "/api/graphs/g0")[1]
    assert doc["qParams"]["clickedId"] == "1_5_1" and doc["qParams"]["supernodes"] == [["group", "1_5_1"]]


def test_long_prompt_refused(live_server):
    body = json.dumps({"prompt": "calc: " + "1" * (MAX_FIELD_CHARS * 100)}).encode()
    status, answer = request(live_server, "POST", "/api/trace", body, work_headers(live_server))
    assert status == 400 and "prompt" in answer["error"]


# ---- nesting -------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [100, 100_000])
def test_deeply_nested_body_is_400(live_server, depth):
    body = ('{"prompt": "calc: 1+2=", "options": ' + "[" * depth + "]" * depth + "}").encode()
    status, answer = request(live_server, "POST", "/api/trace", body, work_headers(live_server))
    assert status == 400 and "nested" in answer["error"]
    assert "RecursionError" not in answer["error"]
