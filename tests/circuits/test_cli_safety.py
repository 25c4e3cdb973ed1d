"""The CLI keeps its promises on odd input: one escaped error line, never a traceback; help that
fits 80 columns without `<bool>`; outputs checked before any work and never written over inputs,
symlinks or special files; corrupt transcoders named as such. (benchmarks/qa_bad_inputs.py runs the
broad pass; these are the fast representatives of each class.)"""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from circuits.cli.main import app
from tests.graphs.hand_graph import hand_graph
from tests.transcoders.tiny import random_transcoder
from transcoders.formats import save_transcoder


def _run(*args, env=None):
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "80", **(env or {})}, terminal_width=80)
    return result


def _one_error_line(result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_control_characters_in_error_lines_are_escaped():
    line = _one_error_line(_run("models", "predict", "bogus\x1b[2J\x07\u202e", "x"))
    assert "\x1b" not in line and "\x07" not in line and "\u202e" not in line
    assert "\\x1b[2J\\x07" in line


@pytest.mark.parametrize("args, said", [(["trac", "x"], "No such command 'trac'"),
                                        (["models", "lst"], "No such command 'lst'")])
def test_unknown_commands_are_one_line(args, said):
    assert said in _one_error_line(_run(*args))


def test_empty_circuits_home_is_one_line():
    assert "CIRCUITS_HOME is set but empty" in _one_error_line(_run("models", "list", env={"CIRCUITS_HOME": ""}))


@pytest.mark.parametrize("command", [["trace"], ["intervene"], ["transcoders", "train"], ["features", "index"]])
def test_help_fits_80_columns_and_shows_flags_whole(command):
    result = _run(*command, "--help")
    assert result.exit_code == 0
    assert "<bool>" not in result.stdout and "…" not in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    if command == ["intervene"]:
        assert "--freeze-attention / --no-freeze-attention" in result.stdout


def test_prune_writes_through_a_symlink_and_never_over_its_input(graph_npz, tmp_path):
    real, link = tmp_path / "real.json", tmp_path / "link.json"
    link.symlink_to(real)
    result = _run("prune", str(graph_npz), "-o", str(link), "--json")
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and "nodes" in json.loads(real.read_text())
    before = graph_npz.read_bytes()
    assert "also the input" in _one_error_line(_run("prune", str(graph_npz), "-o", str(graph_npz)))
    assert graph_npz.read_bytes() == before
    assert _run("prune", str(graph_npz), "-o", "/dev/null").exit_code == 0
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_prune_on_viewer_json_says_what_it_takes(graph_npz, tmp_path):
    viewer = tmp_path / "g.json"
    assert _run("prune", str(graph_npz), "-o", str(viewer)).exit_code == 0
    line = _one_error_line(_run("prune", str(viewer)))
    assert "viewer JSON" in line and "--full" in line and "pickle" not in line


@pytest.mark.parametrize("where, said", [("afile/x.png", "is a file, not a folder"),
                                         ("missing/x.png", "does not exist"), (".", "is a directory")])
def test_fidelity_plot_path_is_checked_before_any_work(tmp_path, where, said):
    (tmp_path / "afile").write_text("x")
    tc = save_transcoder(random_transcoder("clt", n_layers=2), tmp_path / "tc")
    line = _one_error_line(_run("fidelity", "--model", "no-such-model-so-work-would-fail", "--transcoders",
                                str(tc), "--plot", str(tmp_path / where)))
    assert said in line


def test_transcoders_info_refuses_nan_weights(tmp_path):
    tc = save_transcoder(random_transcoder("plt", n_layers=2), tmp_path / "tc")
    assert _run("transcoders", "info", str(tc), "--json").exit_code == 0
    tensors = load_file(str(tc / "layer_1.safetensors"))
    tensors["W_dec"][0, 0] = float("nan")
    save_file(tensors, str(tc / "layer_1.safetensors"))
    assert "NaN or infinite" in _one_error_line(_run("transcoders", "info", str(tc)))
    tensors["W_dec"] = tensors["W_dec"].to(torch.int64)
    save_file(tensors, str(tc / "layer_1.safetensors"))
    assert "not floating point" in _one_error_line(_run("transcoders", "info", str(tc)))
