"""trace-batch across processes: kill -9 mid-run then rerun equals an uninterrupted run; two gloo
ranks (torchrun) and two local "nodes" (c10d rendezvous on loopback) write the same folder as one
process, byte for byte apart from timing fields."""

from __future__ import annotations

import json
import signal
import time

import pytest

from circuits.batch import manifest as mf
from tests.circuits.batch.helpers import (addition_prompts, assert_same_outputs, cli, finish, free_port,
                                         save_tiny_transcoder)

N_PROMPTS = 6


def two_ranks() -> list[str]:
    return ["--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(free_port())]


@pytest.fixture(scope="module")
def batch(world_tiny, tmp_path_factory):
    """Prompts, a transcoder folder, and the one-process reference output."""
    root = tmp_path_factory.mktemp("batch")
    tc = save_tiny_transcoder(world_tiny, root / "clt")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(addition_prompts(N_PROMPTS, seed=3)) + "\n")
    ref = root / "one"
    finish(cli("trace-batch", str(prompts), "--out", str(ref), *_args(tc)))
    return prompts, tc, ref


def _args(tc):
    return ["--model", "world-tiny", "--transcoders", str(tc), "--json", "--threads", "1"]


def test_kill_9_mid_run_then_rerun_loses_nothing(batch, tmp_path):
    prompts, tc, ref = batch
    many = tmp_path / "many.txt"
    many.write_text("\n".join(addition_prompts(40, seed=3)) + "\n")
    out = tmp_path / "out"
    proc = cli("trace-batch", str(many), "--out", str(out), *_args(tc))
    manifest, deadline = out / mf.MANIFEST, time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if manifest.exists() and manifest.read_text().count("\n") >= 3:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {p.name for p in (out / "graphs").iterdir()}
    assert 0 < len([line for line in manifest.read_text().splitlines() if line]) < 40  # killed mid-run
    text = finish(cli("trace-batch", str(many), "--out", str(out), *_args(tc)))
    summary = json.loads(text)
    assert summary["skipped"] >= 3 and summary["traced"] + summary["skipped"] == 40
    records = [json.loads(x) for x in manifest.read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(40))  # all, once each, in input order
    assert all((out / r["files"]["full"]).is_file() and (out / r["files"]["pruned"]).is_file() for r in records)
    assert done_before <= {p.name for p in (out / "graphs").iterdir()}
    # the first prompts are the reference run's prompts: same graphs as the uninterrupted run
    head = tmp_path / "head"
    head.mkdir()
    for name in ("run.json",):
        (head / name).write_bytes((out / name).read_bytes())
    (head / "graphs").mkdir()
    for r in records[:N_PROMPTS]:
        for key in ("full", "pruned"):
            (head / r["files"][key]).write_bytes((out / r["files"][key]).read_bytes())
    (head / mf.MANIFEST).write_text("".join(line + "\n" for line in manifest.read_text().splitlines()[:N_PROMPTS]))
    assert_same_outputs(ref, head)


def test_two_gloo_ranks_write_what_one_process_writes(batch, tmp_path):
    prompts, tc, ref = batch
    out = tmp_path / "two"
    text = finish(cli("trace-batch", str(prompts), "--out", str(out), *_args(tc),
                      torchrun=two_ranks()))
    assert json.loads(text[text.index("{"):])["ranks"] == 2
    assert_same_outputs(ref, out)


def test_two_local_nodes_meet_by_c10d_rendezvous(batch, tmp_path):
    """Multi-node as on a cluster (docs/distributed.md): two torchrun agents, one per "node", one
    rank each, meeting at a c10d rendezvous on loopback."""
    prompts, tc, ref = batch
    out, port = tmp_path / "nodes", free_port()
    nodes = [cli("trace-batch", str(prompts), "--out", str(out), *_args(tc),
                 torchrun=["--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(rank), "--rdzv-backend", "c10d",
                           "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "test-batch"])
             for rank in (0, 1)]
    texts = [finish(p) for p in nodes]
    printed = [json.loads(t[t.index("{"):]) for t in texts if "{" in t]
    assert len(printed) == 1 and printed[0]["ranks"] == 2  # rank 0 reports, the other rank is silent
    assert_same_outputs(ref, out)


def test_evaluate_on_two_ranks_scores_what_one_process_scores(batch, tmp_path):
    prompts, tc, _ = batch
    one, two = tmp_path / "one", tmp_path / "two"
    finish(cli("evaluate", str(prompts), "--out", str(one), *_args(tc)))
    finish(cli("evaluate", str(prompts), "--out", str(two), *_args(tc),
               torchrun=two_ranks()))
    for name in ("faithfulness.jsonl", "faithfulness.json"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    assert len((one / "faithfulness.jsonl").read_text().splitlines()) == N_PROMPTS
