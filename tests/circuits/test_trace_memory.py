"""The trace's memory budget: the default cap shrinks to fit it, an explicit cap that does not is
refused in one line, and the byte estimate grows with what a trace really allocates."""

from __future__ import annotations

import pytest

from circuits.attribution.memory import DEFAULT_MAX_FEATURE_NODES, TraceShape, choose_feature_cap
from circuits.errors import CircuitsError

# the 81-token paragraph of the issue: ~201k active features on SmolLM2 with a PLT (d=576)
PARAGRAPH = TraceShape(n_active=201_000, n_errors=30 * 80, n_pos=81, n_logits=10,
                       decoder_floats=201_000 * 576, gradient_bytes=1 << 30)


def test_uncapped_paragraph_would_need_far_more_than_a_laptop():
    assert PARAGRAPH.bytes_for(201_000) > 100 * 2 ** 30


def test_default_cap_fits_the_budget():
    n = choose_feature_cap(PARAGRAPH, None, 4.0)
    assert 0 < n < DEFAULT_MAX_FEATURE_NODES
    assert PARAGRAPH.bytes_for(n) <= 4 * 2 ** 30 < PARAGRAPH.bytes_for(n + 1)


def test_small_prompt_keeps_every_feature_under_the_default_cap():
    small = TraceShape(n_active=120, n_errors=20, n_pos=6, n_logits=3, decoder_floats=120 * 64, gradient_bytes=10_000)
    assert choose_feature_cap(small, None, 4.0) == 120
    assert choose_feature_cap(small, 50, 4.0) == 50
    assert choose_feature_cap(small, None, None) == 120  # no budget: every feature


def test_explicit_cap_over_budget_is_refused_with_what_to_change():
    with pytest.raises(CircuitsError, match=r"lower --max-feature-nodes to \d+ or raise --memory-gb"):
        choose_feature_cap(PARAGRAPH, 7500, 4.0)


def test_budget_too_small_for_any_feature_says_shorten_the_prompt():
    with pytest.raises(CircuitsError, match="shorten the prompt"):
        choose_feature_cap(PARAGRAPH, None, 0.5)
