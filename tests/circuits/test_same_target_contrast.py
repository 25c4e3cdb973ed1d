"""`--target X --contrast X` would trace a direction of zeros: refused in one line."""

from __future__ import annotations

import pytest

from circuits.errors import CircuitsError
from circuits.attribution.targets import custom_targets


def test_same_target_and_contrast_is_refused(world_tiny):
    with pytest.raises(CircuitsError, match="same token"):
        custom_targets(world_tiny.model, ["Austin"], "Austin")
    (target,) = custom_targets(world_tiny.model, ["Austin"], "Albany")
    assert target.direction_d.abs().sum() > 0
