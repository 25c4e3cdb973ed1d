"""`circuits transcoders train` refuses options that do nothing or cannot hold (issue 22): one line,
exit 2, nothing written; the refusals are the TranscoderArchitecture's and the thread check's."""

from __future__ import annotations

import pytest

from tests.circuits.test_transcoders_cli import _one_error_line, run


@pytest.mark.parametrize("args, message", [
    (["--topk", "4"], "--topk 4 does nothing with activation 'jumprelu': add --activation topk, or drop --topk"),
    (["--activation", "relu", "--topk", "4"], "--topk 4 does nothing with activation 'relu'"),
    (["--activation", "topk", "--topk", "100000", "--features", "32"],
     "--topk 100000 is more than the 32 features per layer (--features)"),
])
def test_topk_that_does_nothing_or_cannot_hold_is_refused(args, message, tmp_path, capsys):
    code, _, err = run(["transcoders", "train", "--model", "world-tiny", "--out", str(tmp_path / "o"), *args], capsys)
    assert code == 2 and message in _one_error_line(err)
    assert not (tmp_path / "o").exists()


def test_more_threads_than_cores_is_refused(tmp_path, capsys, monkeypatch):
    """Refused, not clamped: the user asked for a number the machine cannot give (4096 threads on 2 cores
    ran 9x slower at load average 1,000); unset, the trainer measures the faster count itself."""
    from transcoders import threads

    monkeypatch.setattr(threads, "allowed_cores", lambda: 2)
    code, _, err = run(["transcoders", "train", "--model", "world-tiny", "--out", str(tmp_path / "o"),
                        "--threads", "3"], capsys)
    assert code == 2 and "--threads 3 is more than the 2 CPU cores this process may use" in _one_error_line(err)
    assert not (tmp_path / "o").exists()
    threads.check_threads(2)
    threads.check_threads(None)


def test_the_architecture_refuses_what_the_cli_refuses():
    from pydantic import ValidationError

    from transcoders.config import TranscoderArchitecture

    assert TranscoderArchitecture(activation="topk", topk=32, n_features=32).topk == 32
    for bad in ({"topk": 4}, {"activation": "topk", "topk": 33, "n_features": 32}):
        with pytest.raises(ValidationError):
            TranscoderArchitecture(**bad)
