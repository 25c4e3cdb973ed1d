"""Interventions never answer with NaN: non-finite values are refused when parsed, and values so
large that the model's logits overflow are a one-line error, not NaN/Infinity in the output."""

from __future__ import annotations

import pytest

from circuits.errors import CircuitsError
from circuits.interventions import Intervention, feature_activations, intervene_tokens, parse_set
from tests.circuits.test_interventions import active_feature


@pytest.mark.parametrize("text", ["1:2:3=1e999", "1:2:3=x1e999", "1:2:3=-1e400"])
def test_overflowing_numbers_are_refused_when_parsed(text):
    with pytest.raises(CircuitsError, match="not a finite number"):
        parse_set(text)


@pytest.mark.parametrize("kw", [dict(value=float("nan")), dict(multiplier=float("inf"))])
def test_non_finite_interventions_are_refused(kw):
    with pytest.raises(CircuitsError, match="not a finite number"):
        Intervention(1, 2, 3, **kw)


def test_values_that_overflow_the_model_are_an_error_not_nan(pair, tokens):
    model, tc = pair
    on = active_feature(feature_activations(model, tc, tokens), 1, 3)
    with pytest.raises(CircuitsError, match="NaN or infinity"):
        intervene_tokens(model, tc, tokens, [Intervention(1, 3, on, value=1e38)])
    with pytest.raises(CircuitsError, match="not a finite number"):
        intervene_tokens(model, tc, tokens, [Intervention(1, 3, on, multiplier=1e308)])
