"""kill -9 at a random moment, then --resume: the result equals an uninterrupted run (slow: subprocesses)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from transcoders.checkpoint import CHECKPOINT_FILE
from transcoders.errors import TranscoderError
from transcoders.loading import load_transcoder

RUN = """
import sys, torch
torch.set_num_threads(1)
from tests.transcoders.tiny import tiny_model, token_sequences, TinyLayers
from transcoders.train_config import TrainConfig
from transcoders.trainer import train_transcoder
cfg = TrainConfig.from_flat(dict(n_features=64, tokens=200_000, batch_size=256, buffer_tokens=4096, seq_len=16,
                                 model_batch=32, log_every=5, checkpoint_seconds=0, lr=3e-3, threads=1))
train_transcoder(TinyLayers(tiny_model()), token_sequences(1500), cfg, sys.argv[1], model_name="tiny", progress=False,
                 resume=sys.argv[2] == "resume")
"""


def _run(out: Path, mode: str) -> subprocess.Popen:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.Popen([sys.executable, "-c", RUN, str(out), mode], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted(tmp_path):
    full = _run(tmp_path / "full", "fresh")
    killed = _run(tmp_path / "killed", "fresh")
    ckpt = tmp_path / "killed" / CHECKPOINT_FILE
    deadline, seen = time.time() + 300, set()
    while len(seen) < 3 and time.time() < deadline and killed.poll() is None:
        try:  # let it run on past a few checkpoint rewrites, then kill mid-flight
            seen.add(ckpt.stat().st_mtime_ns)
        except FileNotFoundError:
            pass
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert ckpt.exists() and not (tmp_path / "killed" / "config.yaml").exists()
    with pytest.raises(TranscoderError):  # the killed folder holds no loadable transcoder
        load_transcoder(tmp_path / "killed")
    resumed = _run(tmp_path / "killed", "resume")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read().decode()
    assert full.wait(timeout=600) == 0, full.stderr.read().decode()
    a, b = load_transcoder(tmp_path / "full"), load_transcoder(tmp_path / "killed")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-6, msg=name)
