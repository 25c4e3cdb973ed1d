"""One validation layer: every numeric option of every command refuses non-finite, out-of-range and
huge values with one line naming the option (exit 2, no traceback), before any work is done."""

from __future__ import annotations

import typing

import pytest
import typer
from typer.testing import CliRunner

from circuits.cli.main import app
from circuits.cli.options import Number


def _commands(group, path=()):
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def _number(param) -> Number | None:
    parser = getattr(param.type_descriptor.parameter_info, "parser", None)
    return parser if isinstance(parser, Number) else None


def _is_numeric(param) -> bool:
    annotation = param.type_descriptor.annotation
    return annotation in (int, float) or any(a in (int, float) for a in typing.get_args(annotation))


COMMANDS = list(_commands(typer.main.get_command(app)))
NUMERIC = [(path, p) for path, cmd in COMMANDS for p in cmd.params
           if p.param_type_name == "option" and _is_numeric(p)]


def _required_args(cmd) -> list[str]:
    args = []
    for p in cmd.params:
        if p.param_type_name == "argument" and p.required:
            args.append("x")
        elif p.param_type_name == "option" and p.required:
            args += [p.opts[0], "x"]
    return args


def test_every_numeric_option_is_a_bounded_number():
    assert len(NUMERIC) > 40  # trace, train, features, intervene, demos, validate, fidelity, prune, serve ...
    unchecked = [f"{' '.join(path)} {p.opts[0]}" for path, p in NUMERIC if _number(p) is None]
    assert unchecked == []
    unbounded = [f"{' '.join(path)} {p.opts[0]}" for path, p in NUMERIC
                 if _number(p).min is None or _number(p).max is None]
    assert unbounded == []


def _bad_values(number: Number) -> list[str]:
    values = ["nan", "inf", "-inf", "1e400", str(int(number.max) + 1 if number.kind is int else number.max * 10 + 1),
              "99999999999999999999999"]
    below = number.min - (0 if number.min_open else 1)
    values.append(str(int(below) if number.kind is int else below))
    return values


@pytest.mark.parametrize("path,param", NUMERIC, ids=[f"{' '.join(p)}{q.opts[0]}" for p, q in NUMERIC])
def test_bad_numbers_are_one_line(path, param):
    cmd = dict(COMMANDS)[path]
    runner = CliRunner()
    for value in _bad_values(_number(param)):
        result = runner.invoke(app, [*path, *_required_args(cmd), param.opts[0], value])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2, (value, result.output)
        assert len(lines) == 1 and lines[0].startswith("error: ") and param.opts[0] in lines[0], (value, lines)
        assert "Traceback" not in result.output


def test_trace_config_error_names_the_option_and_its_range():
    result = CliRunner().invoke(app, ["trace", "calc: 36+59=", "--node-threshold", "7"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: Invalid value for '--node-threshold': 7.0 is not in the range 0<x<=1"


@pytest.mark.parametrize("device,message", [("bogus", "--device must be auto, cpu, cuda or cuda:N (got 'bogus')"),
                                            ("cuda:x", "--device must be")])
def test_bad_device_is_one_line(device, message):
    result = CliRunner().invoke(app, ["intervene", "calc: 36+59=", "--set", "0:1:2=0", "--device", device])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [f"error: {message}"] or \
        (result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1)


def test_cuda_without_cuda_is_one_line(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = CliRunner().invoke(app, ["trace", "calc: 36+59=", "--device", "cuda"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: --device cuda: no CUDA device is available on this machine (use --device cpu)"


def test_a_config_validation_error_is_one_line_naming_the_flag():
    from circuits.cli.options import build_config
    from circuits.errors import CircuitsError
    from transcoders.train_config import TrainConfig

    with pytest.raises(CircuitsError, match=r"^--features Input should be greater than 0 \(got 0\)$"):
        build_config(TrainConfig, {"n_features": 0})
    with pytest.raises(CircuitsError, match="--lr Input should be a finite number"):
        build_config(TrainConfig, {"lr": float("nan")})


DTYPE_COMMANDS = [path for path, cmd in COMMANDS if any("--dtype" in p.opts for p in cmd.params)]


def test_every_command_that_loads_a_model_takes_dtype():
    have = {" ".join(path) for path in DTYPE_COMMANDS}
    assert {"trace", "intervene", "serve", "fidelity", "features index", "features show", "models predict",
            "validate", "demo addition", "demo two-hop"} <= have


@pytest.mark.parametrize("path", DTYPE_COMMANDS, ids=[" ".join(p) for p in DTYPE_COMMANDS])
def test_bad_dtype_is_one_line(path):
    cmd = dict(COMMANDS)[path]
    for value in ("float8", "int8", "float64", ""):
        result = CliRunner().invoke(app, [*path, *_required_args(cmd), "--dtype", value])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2, (value, result.output)
        assert len(lines) == 1 and lines[0].startswith("error: ") and "--dtype" in lines[0], (value, lines)
        assert "Traceback" not in result.output
