"""The QA pass of issue 22 on the viewer servers, rerunnable: `circuits view` and `circuits serve` as
a hostile page or client would meet them.

    python benchmarks/qa_server.py [--only SUBSTRING] [--keep]

Sets up a private $CIRCUITS_HOME in a temporary folder, writes a small graph JSON (the hand-built
test graph), starts `circuits view` on it and `circuits serve --model world-tiny` (built in the
private home on first use: about a minute on 2 cores), each on 127.0.0.1 with a free port, and sends
each bad request: a foreign Host (DNS rebinding), a foreign Origin, `text/plain` and token-less
requests that would do work, oversized bodies (by Content-Length and streamed), oversized and
mistyped qParams fields, JSON nested too deeply, an over-long prompt. Then damaged graph files for
`circuits view` (nested too deeply, a node id not of its form, `metadata` a string, a FIFO), and
SIGTERM to both servers (exit 0, "viewer stopped").

Loopback only; every wait is bounded (no case waits longer than 120 s). Prints one line per case,
PASS or FAIL (with what was seen), and a total; exits 1 if any case failed. Not a test: tests/viewer
covers each class with fast tests (test_server_guard.py, test_cli_api.py).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
START_S, CASE_S = 600, 120  # bounds: a server start (serve builds world-tiny), one case


@dataclass
class Reply:
    status: int
    body: object  # parsed JSON, or the text


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    token: str = ""

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                host: str | None = None, chunks: int = 0) -> Reply:
        """One request on a fresh connection; `chunks` > 0 streams that many 64 KiB chunks instead."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=CASE_S)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", host if host is not None else f"127.0.0.1:{self.port}")
            for name, value in (headers or {}).items():
                conn.putheader(name, value)
            if body is not None and "Content-Length" not in (headers or {}):
                conn.putheader("Content-Length", str(len(body)))
            if chunks:
                conn.putheader("Transfer-Encoding", "chunked")
            try:
                conn.endheaders(body)
                for _ in range(chunks):
                    conn.send(b"10000\r\n" + b"[" * 65536 + b"\r\n")
                if chunks:
                    conn.send(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered before reading it all: read the answer
            response = conn.getresponse()
            text = response.read().decode("utf-8", "replace")
        finally:
            conn.close()
        try:
            return Reply(response.status, json.loads(text))
        except ValueError:
            return Reply(response.status, text)

    def work(self, **extra) -> dict:
        return {"Content-Type": "application/json", "X-Circuits-Token": self.token, **extra}


def start(argv: list[str], env: dict) -> Server:
    proc = subprocess.Popen([sys.executable, "-m", "circuits", *argv, "--host", "127.0.0.1", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    deadline = time.time() + START_S
    while time.time() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            match = re.match(r"viewer at http://127\.0\.0\.1:(\d+)/", line)
            if match:
                server = Server(proc, int(match.group(1)))
                page = server.request("GET", "/").body
                token = re.search(r'name="circuits-token" content="([^"]+)"', str(page))
                server.token = token.group(1) if token else ""
                return server
            if not line and proc.poll() is not None:
                break
    proc.kill()
    raise SystemExit(f"`circuits {' '.join(argv)}` did not start: {proc.stderr.read()[-2000:]}")


def stop_with_sigterm(server: Server) -> str | None:
    server.proc.send_signal(signal.SIGTERM)
    try:
        out, err = server.proc.communicate(timeout=CASE_S)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        return "still running 120 s after SIGTERM"
    if server.proc.returncode != 0:
        return f"exit {server.proc.returncode}"
    if not out.strip().endswith("viewer stopped") or "Traceback" in err:
        return f"no closing line (stdout ends {out.strip()[-60:]!r})"
    return None


# ---- checks ---------------------------------------------------------------------------------
def expect(reply: Reply, status: int | tuple[int, ...], fragment: str = "") -> str | None:
    statuses = status if isinstance(status, tuple) else (status,)
    error = reply.body.get("error", "") if isinstance(reply.body, dict) else str(reply.body)[:100]
    if reply.status not in statuses:
        return f"status {reply.status} (wanted {'/'.join(map(str, statuses))}): {error[:120]}"
    if fragment and fragment not in error:
        return f"error {error[:120]!r} does not say {fragment!r}"
    return None


def one_error_line(argv: list[str], env: dict, fragment: str, timeout: float = CASE_S) -> str | None:
    try:
        proc = subprocess.run([sys.executable, "-m", "circuits", *argv], capture_output=True, text=True,
                              env=env, cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"still running after {timeout:.0f} s"
    lines = proc.stderr.strip().splitlines()
    if proc.returncode != 2 or len(lines) != 1 or not lines[0].startswith("error: ") or fragment not in lines[0]:
        return f"exit {proc.returncode}, stderr {proc.stderr.strip()[-160:]!r}"
    return None


def deep(depth: int) -> bytes:
    return ('{"prompt": "calc: 1+2=", "options": ' + "[" * depth + "]" * depth + "}").encode()


def view_cases(v: Server) -> list[tuple[str, Callable[[], str | None]]]:
    q = "/api/graphs/g0/qparams"
    put = lambda body, headers: v.request("PUT", q, json.dumps(body).encode(), headers)  # noqa: E731

    def huge_clicked() -> str | None:
        problem = expect(put({"clickedId": "x" * 100_000}, v.work()), 400, "clickedId")
        size = len(json.dumps(v.request("GET", "/api/graphs/g0").body))
        return problem or (f"a later graph response is {size} bytes" if size > 50_000 else None)

    def schema_ok() -> str | None:
        reply = put({"pinnedIds": ["1_5_1"], "supernodes": [["s", "1_5_1"]], "clickedId": "1_5_1",
                     "linkType": "both", "sg_pos": ""}, v.work())
        return expect(reply, 200)

    return [
        ("view: Host attacker.example (DNS rebinding)", lambda: expect(
            v.request("GET", "/api/graphs/g0", host=f"attacker.example:{v.port}"), (400, 421), "Host")),
        ("view: Host without a name", lambda: expect(v.request("GET", "/api/info", host=""), (400, 421))),
        ("view: Host localhost:PORT served", lambda: expect(
            v.request("GET", "/api/graphs/g0", host=f"localhost:{v.port}"), 200)),
        ("view: Host [::1]:PORT served", lambda: expect(v.request("GET", "/api/info", host=f"[::1]:{v.port}"), 200)),
        ("view: GET from a foreign Origin", lambda: expect(
            v.request("GET", "/api/graphs/g0", headers={"Origin": "http://attacker.example"}), 403, "origin")),
        ("view: qParams PUT as text/plain", lambda: expect(
            put({"pinnedIds": []}, {"Content-Type": "text/plain", "X-Circuits-Token": v.token}), 415)),
        ("view: qParams PUT without token", lambda: expect(
            put({"pinnedIds": []}, {"Content-Type": "application/json"}), 403, "token")),
        ("view: qParams PUT with a wrong token", lambda: expect(
            put({"pinnedIds": []}, v.work(**{"X-Circuits-Token": "x" * 43})), 403, "token")),
        ("view: Content-Length 100 MB", lambda: expect(
            v.request("PUT", q, b"{}", {**v.work(), "Content-Length": str(100 << 20)}), 413, "too large")),
        ("view: 1.1 MiB streamed (chunked)", lambda: expect(v.request("PUT", q, None, v.work(), chunks=18), 413)),
        ("view: clickedId of 100 KB, not echoed", huge_clicked),
        ("view: pinnedIds of numbers", lambda: expect(put({"pinnedIds": [1, 2]}, v.work()), 400, "pinnedIds")),
        ("view: linkType a list", lambda: expect(put({"linkType": ["both"]}, v.work()), 400, "linkType")),
        ("view: unknown node pinned", lambda: expect(put({"pinnedIds": ["9_9_9"]}, v.work()), 400, "unknown node")),
        ("view: unknown qParams field", lambda: expect(put({"evil": 1}, v.work()), 400, "evil")),
        ("view: qParams per the schema accepted", schema_ok),
        ("view: body nested 100,000 deep", lambda: expect(v.request("PUT", q, deep(100_000), v.work()), 400, "nested")),
        ("view: body nested 100 deep", lambda: expect(v.request("PUT", q, deep(100), v.work()), 400, "nested")),
        ("view: body not JSON", lambda: expect(v.request("PUT", q, b"{nope", v.work()), 400, "not valid JSON")),
        ("view: trace on view", lambda: expect(
            v.request("POST", "/api/trace", b'{"prompt": "x"}', v.work()), 409, "circuits serve")),
        ("view: path traversal", lambda: expect(v.request("GET", "/static/..%2f..%2fapp.py"), 404)),
    ]


def serve_cases(s: Server) -> list[tuple[str, Callable[[], str | None]]]:
    body = json.dumps({"prompt": "calc: 1+2="}).encode()
    n_graphs = lambda: len(s.request("GET", "/api/info").body["graphs"])  # noqa: E731

    def cross_origin_text_plain() -> str | None:
        before = n_graphs()
        problem = expect(s.request("POST", "/api/trace", body, {"Content-Type": "text/plain",
                                                                   "Origin": "http://attacker.example"}), (403, 415))
        time.sleep(1.0)
        return problem or (None if n_graphs() == before else "a trace was started")

    def traced() -> str | None:
        reply = s.request("POST", "/api/trace", body, s.work(Origin=f"http://127.0.0.1:{s.port}"))
        problem = expect(reply, 202)
        if problem:
            return problem
        deadline = time.time() + CASE_S
        while time.time() < deadline:
            job = s.request("GET", f"/api/jobs/{reply.body['id']}").body
            if job["status"] != "running":
                return None if job["status"] == "done" else f"job {job['status']}: {job['error']}"
            time.sleep(0.5)
        return "the trace did not finish in 120 s"

    intervene = lambda changes, generate=0: s.request(  # noqa: E731
        "POST", "/api/intervene", json.dumps({"prompt": "calc: 1+2=", "changes": changes,
                                              "generate": generate}).encode(), s.work())
    good_change = [{"layer": 0, "pos": 1, "feature": 0, "mode": "value", "amount": 2.0}]
    return [
        ("serve: cross-origin text/plain trace starts nothing", cross_origin_text_plain),
        ("serve: text/plain trace with the token", lambda: expect(
            s.request("POST", "/api/trace", body, {"Content-Type": "text/plain", "X-Circuits-Token": s.token}), 415)),
        ("serve: JSON trace without token", lambda: expect(
            s.request("POST", "/api/trace", body, {"Content-Type": "application/json"}), 403, "token")),
        ("serve: Host attacker.example", lambda: expect(
            s.request("POST", "/api/trace", body, s.work(), host=f"attacker.example:{s.port}"), (400, 421))),
        ("serve: same-origin JSON trace with token runs", traced),
        ("serve: prompt of 100,000 characters", lambda: expect(s.request(
            "POST", "/api/trace", json.dumps({"prompt": "calc: " + "1" * 100_000}).encode(), s.work()), 400, "prompt")),
        ("serve: body nested 100,000 deep", lambda: expect(
            s.request("POST", "/api/trace", deep(100_000), s.work()), 400, "nested")),
        ("serve: options not an object", lambda: expect(s.request(
            "POST", "/api/trace", b'{"prompt": "calc: 1+2=", "options": [1]}', s.work()), 400, "options")),
        ("serve: intervene generating 10**9 tokens", lambda: expect(intervene(good_change, 10**9), 400, "generate")),
        ("serve: intervene on a malformed change", lambda: expect(intervene([{"layer": "x"}]), 400, "malformed")),
        ("serve: intervene accepted", lambda: expect(intervene(good_change), 200)),
    ]


def file_cases(work: Path, env: dict, hand: dict) -> list[tuple[str, Callable[[], str | None]]]:
    def damaged(name: str, doc) -> Path:
        path = work / name
        path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        return path

    bad_id = json.loads(json.dumps(hand))
    next(n for n in bad_id["nodes"] if n["feature_type"] == "cross layer transcoder")["node_id"] = "7"
    deep_doc = '{"metadata": ' + "[" * 100_000 + "]" * 100_000 + "}"
    fifo = work / "fifo.json"
    os.mkfifo(fifo)
    view = lambda path, *extra: ["view", str(path), "--port", "0", *extra]  # noqa: E731
    return [
        ("view deep.json", lambda: one_error_line(view(damaged("deep.json", deep_doc)), env, "nested too deeply")),
        ("view: node_id not of its form", lambda: one_error_line(
            view(damaged("bad_id.json", bad_id)), env, "not of the form")),
        ("view --export-features: node_id not of its form", lambda: one_error_line(
            ["view", str(work / "bad_id.json"), "--export-features", str(work / "pages")], env, "not of the form")),
        ("view: metadata a string", lambda: one_error_line(
            view(damaged("meta.json", {**hand, "metadata": "x"})), env, "'metadata' must be an object")),
        ("view: a FIFO (no writer)", lambda: one_error_line(view(fifo), env, "FIFO", timeout=60)),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run only the cases whose name contains this")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()

    from graphs import prune_graph, write_viewer_json
    from tests.graphs.hand_graph import hand_graph

    work = Path(tempfile.mkdtemp(prefix="qa_server_"))
    env = {**os.environ, "CIRCUITS_HOME": str(work / "home"), "PYTHONPATH": str(ROOT),
           "TOKENIZERS_PARALLELISM": "false"}
    graph = hand_graph()
    write_viewer_json(graph, prune_graph(graph), work / "hand.json")
    hand = json.loads((work / "hand.json").read_text())
    results: list[tuple[str, str | None, float]] = []

    def run(cases) -> None:
        for name, check in cases:
            if args.only not in name:
                continue
            t0 = time.perf_counter()
            try:
                problem = check()
            except Exception as err:  # noqa: BLE001 - a crash of the check is a failure to report
                problem = f"{type(err).__name__}: {err}"
            results.append((name, problem, time.perf_counter() - t0))
            print(f"{'PASS' if problem is None else 'FAIL'}  {name:<52} {time.perf_counter() - t0:6.1f} s"
                  + ("" if problem is None else f"  {problem}"), flush=True)

    started: list[Server] = []

    def server_cases(argv: list[str], cases: Callable[[Server], list], prefix: str) -> None:
        sigterm = f"{prefix}: SIGTERM exits 0 with a closing line"
        names = [name for name, _ in cases(Server(None, 0))] + [sigterm]  # type: ignore[arg-type]
        if not any(args.only in name for name in names):
            return
        server = start(argv, env)
        started.append(server)
        run(cases(server))
        run([(sigterm, lambda: stop_with_sigterm(server))])

    try:
        run(file_cases(work, env, hand))
        server_cases(["view", str(work / "hand.json")], view_cases, "view")
        server_cases(["serve", "--model", "world-tiny", "--device", "cpu"], serve_cases, "serve")
    finally:
        for server in started:
            if server.proc.poll() is None:
                server.proc.kill()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    failed = [name for name, problem, _ in results if problem is not None]
    print(f"total: {len(results) - len(failed)} of {len(results)} passed"
          + (f", FAILED: {len(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
