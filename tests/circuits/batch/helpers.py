"""Shared pieces of the batch tests: a world-tiny transcoder on disk, prompts, running the CLI in a
subprocess (plain or under torchrun), and comparing output folders apart from timing fields."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]


def addition_prompts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"calc: {int(a)}+{int(b)}=" for a, b in rng.integers(0, 60, size=(n, 2))]


def save_tiny_transcoder(world_tiny, folder: Path, n_features: int = 48) -> Path:
    from tests.circuits.attribution_checks import random_transcoder
    from transcoders.formats import save_transcoder

    cfg = world_tiny.model.cfg
    tc = random_transcoder(cfg.n_layers, cfg.d_model, "clt", n_features=n_features, seed=11, threshold=0.5)
    return save_transcoder(tc, folder, model_name="world-tiny")


def env(threads: int = 1) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}


def cli(*args: str, torchrun: list[str] | None = None) -> subprocess.Popen:
    """`python -m circuits ARGS`, or under `python -m torch.distributed.run TORCHRUN -m circuits ARGS`."""
    head = [sys.executable, "-m", "torch.distributed.run", *torchrun, "-m", "circuits"] if torchrun else \
        [sys.executable, "-m", "circuits"]
    return subprocess.Popen([*head, *args], cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode()[-3000:]
    return out.decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MEASURED = ("timing_seconds", "memory_plan")  # measurements of the process: seconds, and resident bytes


def without_timing(obj):
    """A graph's or record's JSON with every measurement of the process removed (timing, and the
    memory plan, which starts from the process's resident bytes): the only fields that may differ."""
    if isinstance(obj, dict):
        return {k: without_timing(v) for k, v in obj.items() if k not in MEASURED}
    if isinstance(obj, list):
        return [without_timing(v) for v in obj]
    return obj


def strip_timing_text(text: str) -> str:
    """JSON text with each `"timing_seconds": {...}` object (flat) cut out; the rest stays byte for byte."""
    for key in MEASURED:
        text = re.sub(r'"%s": \{[^{}]*\}' % key, f'"{key}": {{}}', text)
    return text


def npz_members(path: Path) -> dict[str, bytes | dict]:
    """Every array of a graph .npz as raw bytes (dtype and shape included), metadata without timing."""
    with np.load(path, allow_pickle=False) as npz:
        out = {k: (npz[k].dtype.str, npz[k].shape, npz[k].tobytes()) for k in npz.files if k != "metadata"}
        out["metadata"] = without_timing(json.loads(str(npz["metadata"])))
    return out


def assert_same_outputs(a: Path, b: Path) -> None:
    """Two trace-batch folders hold the same files, equal byte for byte apart from timing fields:
    every .npz array's bytes, the .npz metadata, the viewer JSON, run.json and the manifest."""
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        if rel.suffix == ".npz":
            assert npz_members(a / rel) == npz_members(b / rel), rel
        elif rel.suffix in (".json", ".jsonl"):
            assert strip_timing_text((a / rel).read_text()) == strip_timing_text((b / rel).read_text()), rel
        else:
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
