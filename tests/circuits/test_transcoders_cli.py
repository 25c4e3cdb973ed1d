"""`circuits transcoders train` and `circuits fidelity` as a user runs them: bad input gives one
line and exit code 2 with nothing lost; a small real run saves a loadable transcoder."""

from __future__ import annotations

import json
import sys

import pytest

from circuits.cli.main import main
from circuits.errors import CircuitsError
from circuits.corpora.sequences import TextFileSequences, check_text_file
from transcoders.formats import save_transcoder
from transcoders.loading import load_transcoder

FAST = ["--features", "32", "--tokens", "6000", "--batch-size", "256", "--buffer-tokens", "2048",
        "--model-batch", "32", "--no-progress"]


def run(args: list[str], capsys) -> tuple[int, str, str]:
    old = sys.argv
    sys.argv = ["circuits", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str) -> str:
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("value", ["0", "-3"])
def test_features_must_be_positive(tmp_path, capsys, value):
    code, _, err = run(["transcoders", "train", "--model", "world-tiny", "--out", str(tmp_path / "o"),
                        "--features", value], capsys)
    assert code == 2 and "--features" in _one_error_line(err) and not (tmp_path / "o").exists()


def test_unknown_model(tmp_path, capsys):
    code, _, err = run(["transcoders", "train", "--model", "no-such-model", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "unknown model 'no-such-model'" in _one_error_line(err)


def test_existing_output_directory_is_kept(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = run(["transcoders", "train", "--model", "world-tiny", "--out", str(out)], capsys)
    assert code == 2 and "--overwrite" in _one_error_line(err)
    assert (out / "notes.txt").read_text() == "mine"
    code, _, err = run(["transcoders", "train", "--model", "world-tiny", "--out", str(out), "--resume"], capsys)
    assert code == 2 and "no checkpoint" in _one_error_line(err)


def test_corpus_file_checks(tmp_path):
    empty, binary = tmp_path / "empty.txt", tmp_path / "bin.txt"
    empty.write_text("\n\n")
    binary.write_bytes(b"\x89PNG\x00\x00\x01\x02" * 100)
    with pytest.raises(CircuitsError, match="is empty"):
        check_text_file(empty)
    with pytest.raises(CircuitsError, match="not text"):
        check_text_file(binary)
    with pytest.raises(CircuitsError, match="does not exist"):
        check_text_file(tmp_path / "missing.txt")


class _WordTokenizer:
    bos_token_id = 1

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [2 + len(w) for w in text.split()]}


def test_text_file_documents_windows_and_heldout_split(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("\n".join(f"doc {i} " + "w " * 9 for i in range(20)) + "\n")
    train = list(TextFileSequences(f, _WordTokenizer(), seq_len=5))
    held = list(TextFileSequences(f, _WordTokenizer(), seq_len=5, heldout=True))
    assert all(s[0] == 1 and 2 <= len(s) <= 5 for s in train + held)  # BOS + window
    assert len(train) == 9 * len(held) and len(held) == 2 * 3  # docs 9 and 19 held out, 11 tokens -> 3 windows


def test_fidelity_refuses_a_mismatched_directory(world_tiny, tmp_path, capsys):
    from tests.transcoders.tiny import random_transcoder

    save_transcoder(random_transcoder(n_layers=2, d_model=8), tmp_path / "tc")
    code, _, err = run(["fidelity", "--model", "world-tiny", "--transcoders", str(tmp_path / "tc")], capsys)
    assert code == 2 and "has 2 layers but the model has" in _one_error_line(err)


def test_train_then_fidelity_on_world_tiny(world_tiny, tmp_path, capsys):
    out, log = tmp_path / "clt", tmp_path / "m.jsonl"
    code, stdout, err = run(["transcoders", "train", "--model", "world-tiny", "--kind", "clt", "--out", str(out),
                             "--log", str(log), "--json", *FAST], capsys)
    assert code == 0, err
    result = json.loads(stdout)
    assert result["fidelity"]["top1_agreement"] > 0 and "fvu_per_layer" in result["fidelity"]
    tc = load_transcoder(out)
    assert (tc.n_layers, tc.n_features) == (world_tiny.model.cfg.n_layers, 32)
    assert json.loads(log.read_text().splitlines()[-1])["tokens"] >= 5000
    code, stdout, err = run(["fidelity", "--model", "world-tiny", "--transcoders", str(out), "--json",
                             "--tokens", "2000", "--plot", str(tmp_path / "f.png")], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    for key in ("fvu_per_layer", "fvu_mean", "l0_per_layer", "l0_total", "dead_fraction", "top1_agreement",
                "kl_mean", "ce_original", "ce_replacement"):
        assert key in report
    assert (tmp_path / "f.png").stat().st_size > 1000
    # a second train into the same folder must not touch it
    before = (out / "W_dec_0.safetensors").read_bytes()
    code, _, err = run(["transcoders", "train", "--model", "world-tiny", "--out", str(out), *FAST], capsys)
    assert code == 2 and (out / "W_dec_0.safetensors").read_bytes() == before


def test_resume_refuses_changed_settings(world_tiny, tmp_path, capsys):
    from circuits.training.train import train_for_model
    from transcoders.train_config import TrainConfig

    out = tmp_path / "r"
    train_for_model(world_tiny, TrainConfig.from_flat(dict(n_features=16, tokens=4000, batch_size=256,
                                                           buffer_tokens=2048, log_every=4, checkpoint_seconds=0)), out, progress=False,
                    stop_at_step=8)
    code, _, err = run(["transcoders", "train", "--model", "world-tiny", "--out", str(out), "--resume",
                        "--features", "64", "--no-progress"], capsys)
    assert code == 2 and "--features 64 (checkpoint: 16)" in _one_error_line(err)
    code, _, err = run(["transcoders", "train", "--model", "world-tiny", "--out", str(out), "--resume",
                        "--no-progress"], capsys)
    assert code == 0, err
    assert load_transcoder(out).n_features == 16


def test_a_training_hook_the_model_lacks_is_one_line_naming_the_option(world_tiny, tmp_path, capsys):
    code, _, err = run(["transcoders", "train", "--model", "world-tiny", "--out", str(tmp_path / "h"),
                        "--input-hook", "hook_nowhere", *FAST], capsys)
    line = _one_error_line(err)
    assert code == 2 and "input hook 'hook_nowhere' does not exist in the model (no blocks.0.hook_nowhere)" in line
    assert "set --input-hook to one of" in line and not (tmp_path / "h").exists()
