"""`circuits trace --prompt-file` (a file or standard input), and the limits a long prompt meets
before any work: the model's context, and a memory budget its forward pass cannot fit."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from circuits.cli.main import app
from tests.circuits.test_trace_cli import PROMPT, tc_dir  # noqa: F401 (fixture)


def _run(*args, stdin: str | None = None):
    result = CliRunner().invoke(app, list(args), input=stdin)
    return result.exit_code, result.output


def _summary(*args, stdin=None) -> dict:
    code, text = _run(*args, "--json", stdin=stdin)
    assert code == 0, text
    return json.loads(text)


def test_prompt_file_and_stdin_trace_the_same_prompt(world_tiny, tc_dir, tmp_path):  # noqa: F811
    common = ("--model", "world-tiny", "--transcoders", str(tc_dir))
    by_argument = _summary("trace", PROMPT, *common)
    doc = tmp_path / "doc.txt"
    doc.write_text(PROMPT, encoding="utf-8")
    for summary in (_summary("trace", "--prompt-file", str(doc), *common),
                    _summary("trace", "--prompt-file", "-", *common, stdin=PROMPT)):
        assert summary["prompt"] == PROMPT and summary["tokens"] == by_argument["tokens"]
        assert summary["counts"] == by_argument["counts"]
        assert summary["scores"] == pytest.approx(by_argument["scores"], rel=1e-6)


@pytest.mark.parametrize("args,message", [
    ((PROMPT, "--prompt-file", "x.txt"), "one of them"),
    ((), "one of them"),
    (("--prompt-file", "missing.txt"), "cannot read --prompt-file missing.txt"),
])
def test_bad_prompt_sources_are_one_line(world_tiny, tc_dir, args, message):  # noqa: F811
    code, text = _run("trace", *args, "--model", "world-tiny", "--transcoders", str(tc_dir))
    assert code == 2
    assert text.strip().startswith("error:") and message in text and len(text.strip().splitlines()) == 1


def test_non_utf8_prompt_file_is_refused(world_tiny, tc_dir, tmp_path):  # noqa: F811
    doc = tmp_path / "doc.txt"
    doc.write_bytes(b"calc: \xff\xfe 36+59=")
    code, text = _run("trace", "--prompt-file", str(doc), "--model", "world-tiny", "--transcoders", str(tc_dir))
    assert code == 2 and "not UTF-8" in text


def test_prompt_past_the_context_is_refused_naming_the_limit(world_tiny, tc_dir, tmp_path):  # noqa: F811
    n_ctx = world_tiny.model.cfg.n_ctx
    doc = tmp_path / "doc.txt"
    doc.write_text(" ".join([PROMPT] * n_ctx), encoding="utf-8")
    out = tmp_path / "g.json"
    code, text = _run("trace", "--prompt-file", str(doc), "--model", "world-tiny", "--transcoders", str(tc_dir),
                      "-o", str(out))
    assert code == 2 and f"the model's context is {n_ctx}" in text and len(text.strip().splitlines()) == 1
    assert not out.exists()


def test_budget_the_forward_cannot_fit_is_refused_before_it(world_tiny, tc_dir, tmp_path, monkeypatch):  # noqa: F811
    from circuits.replacement.model import ReplacementModel

    def no_forward(*args, **kwargs):
        raise AssertionError("the forward pass ran")

    monkeypatch.setattr("circuits.attribution.engine.build_local_replacement", no_forward)
    out = tmp_path / "g.json"
    code, text = _run("trace", PROMPT, "--model", "world-tiny", "--transcoders", str(tc_dir), "--memory-gb", "0.01",
                      "-o", str(out))
    assert code == 2, text
    assert "forward pass" in text and "raise --memory-gb above" in text and len(text.strip().splitlines()) == 1
    assert not out.exists()
    assert ReplacementModel  # the model loaded; only the forward was refused
