"""HeadLoadings.head_totals sums |loading| in blocks of edges: equal to the one-shot sum."""

from __future__ import annotations

import numpy as np
import pytest

from graphs.attention import HeadLoadings


@pytest.mark.parametrize("block", [1, 7, 1 << 14])
def test_blocked_totals_equal_the_one_shot_sum(block):
    rng = np.random.default_rng(0)
    E, L, H = 103, 4, 3
    lo = HeadLoadings(np.arange(E), np.arange(E), rng.normal(size=(E, L, H)).astype(np.float32),
                      np.zeros(E, dtype=np.float32))
    mask = rng.random(E) < 0.4
    mask[10:30] = True  # a contiguous run as well as scattered rows
    for m in (None, mask, np.zeros(E, dtype=bool)):
        expected = np.abs(lo.loadings if m is None else lo.loadings[m]).sum(0, dtype=np.float64)
        np.testing.assert_allclose(lo.head_totals(m, block=block), expected, rtol=1e-12, atol=0)
