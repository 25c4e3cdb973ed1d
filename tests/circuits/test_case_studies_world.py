"""The published outcomes of the `world` case studies (docs/case_studies.md), on the real `world`
model and its default CLT (built on first use: minutes; marked slow).

Addition ("calc: 36+59=" -> 95): inhibiting the magnitude group moves the answer away from 95 (the
ones-digit path does not exist in `world`: its number embeddings carry magnitude only).
Two-hop: swapping the Texas state features for California's on the Dallas prompt makes
Sacramento the answer, the reverse swap on the Kobe prompt makes it Austin, and inhibiting the
California features on the Kobe prompt lowers p(Sacramento) below half.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world_rm():
    from circuits.replacement.model import ReplacementModel

    return ReplacementModel.load("world", progress=False)


def _by_name(experiments, start: str):
    (exp,) = [e for e in experiments if e.name.startswith(start)]
    return exp


def test_addition_magnitude_inhibition_moves_95(world_rm):
    from circuits.studies.demos.addition import run_addition_demo

    report = run_addition_demo(world_rm, top=15)
    magnitude = _by_name(report.experiments, "inhibit the magnitude group")
    assert magnitude.p_answer_before > 0.9
    assert magnitude.worked and magnitude.p_answer_after < 0.1
    assert magnitude.top_after[0]["token"].strip() != "95"


def test_two_hop_swaps_give_the_other_capital(world_rm):
    from circuits.studies.demos.two_hop import run_two_hop_demo

    report = run_two_hop_demo(world_rm)
    to_california = _by_name(report.experiments, "swap Texas -> California")
    assert to_california.worked and to_california.top_after[0]["token"].strip() == "Sacramento"
    assert to_california.p_goal_after > 0.5
    to_texas = _by_name(report.experiments, "swap California -> Texas")
    assert to_texas.worked and to_texas.top_after[0]["token"].strip() == "Austin"
    inhibit_california = _by_name(report.experiments, "inhibit California")
    assert inhibit_california.worked and inhibit_california.p_answer_after < 0.5
