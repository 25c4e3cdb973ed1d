"""One loader check for every command (issue 22): a transcoder folder whose config disagrees with its
files, or whose weights hold a NaN, is refused by trace, intervene, fidelity, demo, serve and
`transcoders info` alike: one `error:` line, exit 2 (before, some traced it with exit 0)."""

from __future__ import annotations

import pytest
import yaml
from safetensors.torch import load_file, save_file

from tests.circuits.test_transcoders_cli import _one_error_line, run

PROMPT = "calc: 36+59="


def _config_edit(**changes):
    def edit(folder):
        cfg = yaml.safe_load((folder / "config.yaml").read_text())
        for key, value in changes.items():
            if key.startswith("circuits."):
                cfg["circuits"][key.split(".", 1)[1]] = value
            elif value is None:
                cfg.pop(key)
            else:
                cfg[key] = value
        (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    return edit


def _nan(folder):
    path = folder / "W_dec_1.safetensors"
    tensors = load_file(str(path))
    tensors["W_dec_1"].view(-1)[-1] = float("nan")
    path.unlink()
    save_file(tensors, str(path))


CASES = {  # what the issue found traced with exit 0 -> the message each command must give
    "relu-over-jumprelu": (_config_edit(activation="relu", **{"circuits.activation": "relu"}),
                           "activation relu but the weight files carry JumpReLU thresholds"),
    "topk-over-jumprelu": (_config_edit(activation="topk", k=4, **{"circuits.activation": "topk", "circuits.topk": 4}),
                           "activation topk but the weight files carry JumpReLU thresholds"),
    "no-input-hook": (_config_edit(feature_input_hook=None), "no feature_input_hook: name the hook"),
    "skip-without-W_skip": (_config_edit(**{"circuits.skip": True}), "says skip: true but the weight files have no W_skip"),
    "nan-weight": (_nan, "'dec' of layer 1 has NaN or infinite weights"),
}
COMMANDS = {
    "trace": ["trace", PROMPT, "--model", "world-tiny", "--json"],
    "intervene": ["intervene", PROMPT, "--set", "0:-1:0=x0", "--model", "world-tiny"],
    "fidelity": ["fidelity", "--model", "world-tiny", "--tokens", "64"],
    "demo": ["demo", "addition", "--model", "world-tiny", "--json"],
    "serve": ["serve", "--model", "world-tiny", "--export-features", "{tmp}/pages"],
    "info": ["transcoders", "info"],
}


@pytest.fixture(scope="module")
def healthy(world_tiny, tmp_path_factory):
    from tests.circuits.attribution_checks import random_transcoder
    from transcoders.formats import save_transcoder

    cfg = world_tiny.model.cfg
    tc = random_transcoder(cfg.n_layers, cfg.d_model, "clt", n_features=48, seed=11, threshold=0.5)
    return save_transcoder(tc, tmp_path_factory.mktemp("loader") / "clt", model_name="world-tiny")


def _args(command, folder, tmp_path):
    args = [a.replace("{tmp}", str(tmp_path)) for a in COMMANDS[command]]
    return [*args, str(folder)] if command == "info" else [*args, "--transcoders", str(folder)]


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_refuses_the_folder_in_one_line(command, case, healthy, tmp_path, capsys):
    import shutil

    folder = tmp_path / "tc"
    shutil.copytree(healthy, folder)
    edit, message = CASES[case]
    edit(folder)
    code, out, err = run(_args(command, folder, tmp_path), capsys)
    assert code == 2 and message in _one_error_line(err), (code, out[-500:], err[-2000:])


def test_the_healthy_folder_is_accepted(healthy, tmp_path, capsys):
    code, out, err = run(_args("info", healthy, tmp_path), capsys)
    assert code == 0 and "jumprelu" in out, err
    code, out, err = run(_args("trace", healthy, tmp_path), capsys)
    assert code == 0, err
