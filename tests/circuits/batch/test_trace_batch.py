"""trace_many and `circuits trace-batch`: equal to single traces, manifest, resume after a partial
run, a half-written prompt, a torn manifest line, and one-line errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from circuits.batch import manifest as mf
from circuits.batch import read_prompts, trace_batch
from circuits.cli.main import app
from safeio.write import temp_name
from tests.circuits.batch.helpers import addition_prompts, assert_same_outputs, npz_members

PROMPTS = ["calc: 36+59=", "calc: 3+4=", "calc: 41+2="]


def test_trace_many_equals_one_trace_per_prompt(setup, one_thread):
    rm = setup
    got = list(rm.trace_many([PROMPTS[0], {"prompt": PROMPTS[1], "target": "7", "id": "seven"}, PROMPTS[2]]))
    assert [item.id for item, _ in got] == ["p000000", "seven", "p000002"]
    for (item, result), prompt in zip(got, PROMPTS):
        single = rm.trace(prompt, targets=list(item.targets))
        assert result.graph.prompt == prompt
        np.testing.assert_array_equal(result.graph.dense_adjacency(), single.graph.dense_adjacency())
        assert result.summary["scores"] == single.summary["scores"]
    assert got[1][1].graph.logit_labels[-1].startswith("7")  # the row's own target was traced


def _run_cli(*args):
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_trace_batch_cli_writes_what_trace_writes(setup, tmp_path, one_thread):
    rm = setup
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps(r) for r in (
        {"prompt": PROMPTS[0], "id": "sum"}, {"prompt": PROMPTS[1], "target": "7", "contrast": "8"})) + "\n")
    out = tmp_path / "out"
    code, text = _run_cli("trace-batch", str(prompts), "--out", str(out), "--model", "world-tiny",
                          "--transcoders", str(rm.transcoder_dir), "--json", "--threads", "1")
    assert code == 0, text
    assert json.loads(text[text.index("{"):])["traced"] == 2
    records = [json.loads(x) for x in (out / mf.MANIFEST).read_text().splitlines()]
    assert [r["id"] for r in records] == ["sum", "p000001"]
    # the same files `circuits trace --full/-o` writes for that prompt and target
    code, text = _run_cli("trace", PROMPTS[1], "--model", "world-tiny", "--transcoders", str(rm.transcoder_dir),
                          "--target", "7", "--contrast", "8", "--full", str(tmp_path / "t.npz"), "-o",
                          str(tmp_path / "t.json"), "--json")
    assert code == 0, text
    assert npz_members(tmp_path / "t.npz") == npz_members(out / records[1]["files"]["full"])
    summary = json.loads(text)
    assert records[1]["scores"] == summary["scores"] and records[1]["sizes"] == summary["counts"]
    assert records[1]["top_logits"][-1]["label"] == summary["logits"][-1]["label"] == "7 - 8"
    viewer = json.loads((out / records[1]["files"]["pruned"]).read_text())
    assert len(viewer["nodes"]) == summary["counts"]["nodes_after"]


def test_resume_skips_finished_redoes_half_written_and_rebuilds_lost_lines(setup, tmp_path, one_thread):
    rm = setup
    items = read_prompts(_write(tmp_path / "p.txt", addition_prompts(5)))
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert trace_batch(rm, items, whole)["traced"] == 5
    # a run killed after prompt 2: its manifest line torn, prompt 3's .npz in place but not its .json
    trace_batch(rm, items[:4], part)
    (part / "graphs" / "p000003.json").unlink()
    lines = (part / mf.MANIFEST).read_text().splitlines()
    (part / mf.MANIFEST).write_text("\n".join(lines[:2]) + "\n" + lines[2][:30])  # line of p000002 torn
    (part / "graphs" / temp_name("p000004.npz", 999999999, "abcdef012345")).write_bytes(b"half")  # a dead writer's temp
    stamp = (part / "graphs" / "p000000.npz").stat().st_mtime_ns
    summary = trace_batch(rm, items, part)
    assert (summary["traced"], summary["skipped"]) == (2, 3)  # p000003 (half-written) and p000004
    assert (part / "graphs" / "p000000.npz").stat().st_mtime_ns == stamp  # finished: not redone
    assert_same_outputs(whole, part)  # p000002's line rebuilt from its files; input order; no temp left


def test_a_changed_prompts_file_or_other_settings_are_refused_not_overwritten(setup, tmp_path, one_thread):
    rm = setup
    out = tmp_path / "out"
    trace_batch(rm, read_prompts(_write(tmp_path / "a.txt", PROMPTS[:2])), out)
    before = (out / "graphs" / "p000000.npz").read_bytes()
    from circuits.errors import CircuitsError
    from circuits.attribution.config import TraceConfig

    with pytest.raises(CircuitsError, match="another prompt"):
        trace_batch(rm, read_prompts(_write(tmp_path / "b.txt", PROMPTS[1:])), out)
    with pytest.raises(CircuitsError, match="other settings"):
        trace_batch(rm, read_prompts(tmp_path / "a.txt"), out, TraceConfig(node_threshold=0.5))
    assert (out / "graphs" / "p000000.npz").read_bytes() == before


@pytest.mark.parametrize("lines, message", [
    (['{"prompt": "calc: 1+2=", "colour": 1}'], "unknown key 'colour'"),
    (['{"prompt": "calc: 1+2=", "id": "a"}', '{"prompt": "calc: 2+2=", "id": "A"}'], "same id"),
    (['{"prompt": "calc: 1+2=", "id": "../x"}'], "must be 1-100 letters"),
    (['{"prompt": "calc: 1+2=", "contrast": "3"}'], "exactly one 'target'"),
    (['{"prompt": "calc: 1+2="'], "not JSON"),
    (['{"prompt": "calc: 1+2=", "target": "zebra"}'], "not a single token"),
    (['{"prompt": "calc: 1+2=", "target": "3"}', '{"prompt": "qwertyuiop"}'], "does not know"),
])
def test_bad_prompts_files_are_one_line_before_any_work(setup, tmp_path, lines, message):
    prompts = _write(tmp_path / "p.jsonl", lines)
    code, text = _run_cli("trace-batch", str(prompts), "--out", str(tmp_path / "out"), "--model", "world-tiny",
                          "--transcoders", str(setup.transcoder_dir))
    assert code == 2 and text.startswith("error: ") and message in text and text.count("\n") == 1, text
    assert not (tmp_path / "out" / "graphs").exists() or not any((tmp_path / "out" / "graphs").iterdir())


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path
