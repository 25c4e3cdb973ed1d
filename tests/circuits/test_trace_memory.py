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


def test_long_prompts_rebuild_patterns_and_the_forward_fits_the_default_budget():
    """SmolLM2-135M's shape (30 layers, 9 query heads on 3 value heads, e = 64): at 2,000 tokens the
    kept patterns (2.1 GiB) pass a quarter of 4 GB: the lowest 14 layers keep theirs, the other 16
    keep q and k (5.9 MB a layer instead of 72 MB)."""
    from circuits.attribution.memory import forward_bytes, pattern_layers_kept

    assert pattern_layers_kept(30, 9, 256, 4.0) == 30 and pattern_layers_kept(30, 9, 1000, 4.0) == 30
    assert pattern_layers_kept(30, 9, 2000, 4.0) == 14 and pattern_layers_kept(30, 9, 2000, None) == 30
    assert pattern_layers_kept(30, 9, 2000, 16.0) == 30 and pattern_layers_kept(30, 9, 8000, 4.0) == 0
    shape = dict(n_layers=30, n_heads=9, d_model=576, n_pos=2000, n_transcoder_features=512, d_vocab=49152)
    kept = forward_bytes(**shape)
    assert forward_bytes(**shape, kept_layers=30) == kept
    rebuilt = forward_bytes(**shape, n_kv_heads=3, d_head=64, kept_layers=0)
    assert kept - rebuilt > 1.9 * 2 ** 30 and rebuilt < 2 * 2 ** 30
    half = forward_bytes(**shape, n_kv_heads=3, d_head=64, kept_layers=14)
    assert rebuilt < half < kept and half - rebuilt < 2 ** 30
