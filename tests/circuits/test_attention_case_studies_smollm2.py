"""The measured outcomes of the attention case studies on SmolLM2-135M and its default PLT
(docs/case_studies.md, "Attention on SmolLM2-135M"; marked slow, and skipped unless
CIRCUITS_SLOW_HOME points at a cache holding the built model and its trained default PLT, e.g.
~/.cache/circuits: training the PLT takes minutes to an hour of CPU).

Induction (`circuits demo attention-induction`): on 12 random word tokens written twice, the
outcome asserted is the one measured there (see the docs for the figures).
Capitals (`circuits demo attention-capitals`): on "The capital of France is", the head carrying the
kept " France" -> last-position edges, its attention to " France", and its QK attribution.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2_rm():
    home = os.environ.get("CIRCUITS_SLOW_HOME")
    if not home or not (Path(home) / "transcoders" / "smollm2-135m" / "default-plt" / "config.yaml").exists():
        pytest.skip("CIRCUITS_SLOW_HOME does not hold smollm2-135m and its trained default PLT")
    from circuits.replacement.model import ReplacementModel

    old = os.environ.get("CIRCUITS_HOME")
    os.environ["CIRCUITS_HOME"] = home
    try:
        return ReplacementModel.load("smollm2-135m", Path(home) / "transcoders" / "smollm2-135m" / "default-plt",
                                     progress=False)
    finally:
        os.environ["CIRCUITS_HOME"] = old or ""
