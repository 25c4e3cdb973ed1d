"""activation_dtype="auto": bfloat16 autocast only where it measures faster than float32 (issue 23:
on a CPU without bf16 units it made SmolLM2's training forward 5.8x slower)."""

from __future__ import annotations

import json

import pytest

from transcoders import precision
from transcoders.precision import resolve_activation_dtype
from transcoders.train_config import TrainConfig


@pytest.fixture
def timed(monkeypatch):
    """Replace the probe's timings: seconds[True] for bfloat16, seconds[False] for float32."""
    seconds, calls = {}, []

    def fake_timer(device, bfloat16):
        def one():
            calls.append(bfloat16)
            return seconds[bfloat16]
        return one

    monkeypatch.setattr(precision, "_timer", fake_timer)
    precision._measured_choice.cache_clear()
    yield seconds, calls
    precision._measured_choice.cache_clear()


@pytest.mark.parametrize("bf16, f32, expected", [(0.5, 1.0, "bfloat16"), (6.0, 1.0, "float32"), (1.2, 1.0, "float32")])
def test_auto_keeps_bfloat16_only_where_it_is_faster(timed, bf16, f32, expected):
    seconds, calls = timed
    seconds.update({True: bf16, False: f32})
    assert resolve_activation_dtype("auto", "cpu") == expected
    if bf16 > 2 * f32:  # an emulated bfloat16 is timed once, not REPS times
        assert calls.count(True) == 1
    measured = len(calls)
    assert resolve_activation_dtype("auto", "cpu") == expected and len(calls) == measured  # once per device


def test_an_explicit_choice_is_never_measured(timed):
    seconds, calls = timed
    assert resolve_activation_dtype("bfloat16", "cpu") == "bfloat16"
    assert resolve_activation_dtype("float32", "cpu") == "float32"
    assert calls == []


def test_the_real_probe_decides_and_is_cached():
    precision._measured_choice.cache_clear()
    first = resolve_activation_dtype("auto", "cpu")
    assert first in ("float32", "bfloat16")
    assert precision._measured_choice.cache_info().misses == 1
    assert resolve_activation_dtype("auto", "cpu") == first and precision._measured_choice.cache_info().hits == 1


def test_training_records_what_auto_resolved_to(world_tiny, tmp_path, timed):
    from circuits.training.train import train_for_model

    seconds, _ = timed
    seconds.update({True: 6.0, False: 1.0})  # this "device" emulates bfloat16
    cfg = TrainConfig.from_flat(dict(n_features=16, tokens=2048, batch_size=256, buffer_tokens=1024,
                                     activation_dtype="auto", eval_tokens=0))
    train_for_model(world_tiny, cfg, tmp_path / "tc", progress=False)
    timing = json.loads((tmp_path / "tc" / "metrics.json").read_text())["training"]["timing"]
    assert timing["activation_dtype"] == "float32"
