"""Training never loses what is already there: --overwrite swaps the old transcoder only for a
complete new one, --log is appended to and keeps foreign lines on resume, --cache-dir refuses a
folder of the user's files, stale temporaries of a killed run are swept."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from safeio.write import TEMP_SUFFIX
from tests.transcoders.tiny import random_transcoder, tiny_model, token_sequences, train_tiny
from transcoders.errors import TranscoderError
from transcoders.formats import save_transcoder
from transcoders.loading import load_transcoder
from transcoders.out_dir import STAGING, begin_staging, commit_staged, prepare_out_dir
from transcoders.train_config import TrainConfig

SMALL = dict(n_features=32, tokens=6_000, batch_size=256, buffer_tokens=2048, seq_len=16,
             model_batch=32, log_every=5, lr=3e-3, checkpoint_seconds=0, threads=1)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def seqs():
    return token_sequences(600)


def _train(model, seqs, out, **kw):
    return train_tiny(model, seqs, out, SMALL, **kw)


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_overwrite_keeps_the_old_transcoder_until_the_new_one_is_complete(model, seqs, tmp_path):
    out = tmp_path / "tc"
    _train(model, seqs, out)
    old = load_transcoder(out)
    (out / "notes.txt").write_text("mine")
    (out / "feature_index.json").write_text("{}")  # an index of the old transcoder
    _train(model, seqs, out, seed=3, overwrite=True, stop_at_step=6)  # "killed" mid-training
    assert _same(load_transcoder(out), old)
    done = _train(model, seqs, out, seed=3, resume=True)
    assert _same(load_transcoder(out), done.transcoder) and not _same(done.transcoder, old)
    assert (out / "notes.txt").read_text() == "mine" and not (out / STAGING).exists()
    assert not (out / "feature_index.json").exists()  # it described the replaced transcoder


@pytest.mark.parametrize("moves_before_kill", [0, 1, 3, 5])
def test_a_kill_during_the_final_swap_is_finished_by_the_next_run(tmp_path, monkeypatch, moves_before_kill):
    out = tmp_path / "tc"
    save_transcoder(random_transcoder("clt", seed=1), out)
    new = random_transcoder("clt", seed=2)
    save_transcoder(new, begin_staging(out))
    real_replace, calls = os.replace, []

    def killed_after_some_moves(src, dst):
        if len(calls) == moves_before_kill:
            raise SystemExit("killed")
        calls.append(src)
        real_replace(src, dst)

    monkeypatch.setattr("transcoders.out_dir.os.replace", killed_after_some_moves)
    with pytest.raises(SystemExit):
        commit_staged(out)
    monkeypatch.undo()
    prepare_out_dir(out, resume=False, overwrite=True)
    assert _same(load_transcoder(out), new) and not (out / STAGING).exists()


def test_an_incomplete_staged_transcoder_is_dropped_and_the_old_one_kept(tmp_path):
    out = tmp_path / "tc"
    old = random_transcoder("plt", seed=1)
    save_transcoder(old, out)
    staged = begin_staging(out)
    save_transcoder(random_transcoder("plt", seed=2), staged)
    (staged / "config.yaml").unlink()  # killed before the staged copy was complete
    prepare_out_dir(out, resume=False, overwrite=True)
    assert _same(load_transcoder(out), old) and not staged.exists()


def test_stale_temporaries_in_the_output_folder_are_swept(tmp_path):
    out = tmp_path / "tc"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / f".checkpoint.safetensors.{dead.pid}.ab12{TEMP_SUFFIX}").write_bytes(b"half")
    assert prepare_out_dir(out, resume=False, overwrite=False) == "fresh"  # only a temp: empty
    assert list(out.iterdir()) == []


def test_log_is_appended_and_resume_keeps_foreign_lines(model, seqs, tmp_path):
    log = tmp_path / "train.jsonl"
    foreign = ['my own note, not JSON', json.dumps({"step": 999, "tokens": 1}), json.dumps({"run": "x", "step": 50})]
    log.write_text("\n".join(foreign) + "\n")
    out = tmp_path / "tc"
    _train(model, seqs, out, stop_at_step=10, log_path=log)
    ours = [json.loads(x) for x in log.read_text().splitlines()[3:]]
    assert log.read_text().splitlines()[:3] == foreign and [r["step"] for r in ours] == [5, 10]
    # a killed run wrote a line after its last checkpoint (step 10): resume drops just that line
    with open(log, "a") as f:
        f.write(json.dumps({**ours[-1], "step": 15}) + "\nanother foreign line\n")
    _train(model, seqs, out, resume=True, log_path=log)
    lines = log.read_text().splitlines()
    assert lines[:3] == foreign and "another foreign line" in lines
    steps = [json.loads(x)["step"] for x in lines if x.startswith('{"run": "' + ours[0]["run"])]
    assert steps == sorted(steps) and len(steps) == len(set(steps)) and steps[-1] == TrainConfig.from_flat(SMALL).n_steps


def test_cache_dir_with_user_files_is_refused_and_left_alone(model, seqs, tmp_path):
    cache = tmp_path / "mine"
    cache.mkdir()
    (cache / "thesis.tex").write_text("years of work")
    with pytest.raises(TranscoderError, match="not an activation cache"):
        _train(model, seqs, tmp_path / "tc", cache_dir=str(cache))
    assert os.listdir(cache) == ["thesis.tex"] and not (tmp_path / "tc").exists()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(TranscoderError, match="is a file, not a folder"):
        _train(model, seqs, tmp_path / "tc", cache_dir=str(tmp_path / "afile"))


def test_cache_dir_of_ours_is_rebuilt_in_place(model, seqs, tmp_path):
    cache = tmp_path / "cache"
    _train(model, seqs, tmp_path / "a", cache_dir=str(cache), activation_tokens=2_000)
    assert (cache / ".circuits-activation-cache").exists()
    _train(model, seqs, tmp_path / "b", cache_dir=str(cache), activation_tokens=4_000)  # larger: rebuilt
    assert json.loads((cache / "meta.json").read_text())["n_tokens"] == 4_000


@pytest.mark.parametrize("bad, message", [("dir", "is a directory"), ("missing/log.jsonl", "does not exist")])
def test_bad_log_path_is_refused_before_any_work(model, seqs, tmp_path, bad, message):
    (tmp_path / "dir").mkdir()
    with pytest.raises(TranscoderError, match=message):
        _train(model, seqs, tmp_path / "tc", log_path=tmp_path / bad)
    assert not (tmp_path / "tc").exists()


def test_absurd_token_counts_are_refused_before_any_work(model, seqs, tmp_path):
    with pytest.raises(ValueError, match="less than or equal"):
        TrainConfig(tokens=10**15)
    # in-memory activations that cannot fit: refused in one line, before the model runs
    with pytest.raises(TranscoderError, match="GiB of memory"):
        _train(model, seqs, tmp_path / "tc", tokens=10**12, activation_tokens=10**12 - 1)
    assert not (tmp_path / "tc").exists()
