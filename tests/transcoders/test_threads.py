"""Thread choice for the cores free now (transcoders.threads)."""

from __future__ import annotations

import pytest
import torch

from transcoders import threads


@pytest.mark.parametrize("others, allowed, ceiling, expected", [
    (0.0, 2, 2, 2),     # quiet machine: every core
    (1.0, 2, 2, 1),     # one core held by another process: never a thread beside it
    (0.9, 2, 2, 1),
    (0.3, 2, 2, 2),     # background noise does not cost a core
    (3.7, 4, 4, 1),     # never fewer than one
    (0.0, 8, 2, 2),     # never more than the ceiling (torch's setting)
    (None, 2, 2, 2),    # unknown load: the ceiling
])
def test_threads_for_free_cores(monkeypatch, others, allowed, ceiling, expected):
    monkeypatch.setattr(threads, "allowed_cores", lambda: allowed)
    assert threads.threads_for_free_cores(others, ceiling) == expected


def test_core_share_subtracts_own_cpu_time(monkeypatch):
    """Busy time of the allowed CPUs counts as others' only beyond this process's own CPU time."""
    clock = {"wall": 100.0, "busy": 50.0, "own": 10.0}
    monkeypatch.setattr(threads, "_busy_seconds", lambda cpus: clock["busy"])
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock["wall"])
    monkeypatch.setattr(threads.time, "process_time", lambda: clock["own"])
    share = threads.CoreShare()
    clock.update(wall=102.0, busy=54.0, own=12.0)  # 2 s: 4 busy CPU-seconds, 2 of them ours
    assert share.others_busy() == pytest.approx(1.0)
    clock.update(wall=103.0, busy=55.9, own=13.9)  # 1 s, all ours: nobody else
    assert share.others_busy() == pytest.approx(0.0)


def test_free_core_threads_restores_and_honours_a_request():
    before = torch.get_num_threads()
    with threads.free_core_threads(requested=1) as adaptive:
        assert torch.get_num_threads() == 1
        assert adaptive.recheck() == 1  # a fixed request is never re-chosen
    assert torch.get_num_threads() == before
