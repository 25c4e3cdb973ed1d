"""The attention demos' plumbing on world-tiny with a random CLT (the `setup` fixture): the random
repeated prompt reads back as itself, the induction report's copy pair and pair checks are what
they claim, and the feature-scaling intervention is a no-op at x1 and a removal at x0."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from circuits.studies.demos.attention_induction import copy_pairs, random_repeated_prompt, run_attention_induction
from circuits.studies.demos.attention_two_hop import (attention_with_feature_removed, attention_with_feature_scaled,
                                                      head_pattern)


def test_the_random_sequence_is_written_twice(setup):
    prompt, ids = random_repeated_prompt(setup, 5, seed=3)
    assert setup.tokens(prompt).tolist()[1:] == ids + ids and len(set(ids)) == 5
    assert copy_pairs(3) == [(4, 2), (5, 3), (6, 4)]


@pytest.fixture(scope="module")
def induction(setup):
    return run_attention_induction(setup, n=4, seed=1, qk_heads=3)


def test_induction_report_checks_what_it_says(setup, induction):
    r = induction
    assert (r.query, r.key) in copy_pairs(r.n)
    assert r.tokens[r.key - 1] == r.tokens[r.query]  # the key's previous token is the query's current token
    shares = [s for _, _, s in r.head_shares]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-9
    tokens = setup.tokens(r.prompt)
    pattern = head_pattern(setup, tokens, *r.head, r.query)
    assert abs(pattern[r.key] - r.attention_to_copy) < 1e-6 and abs(sum(pattern) - 1) < 1e-4
    for _, _, _, q_pos, k_pos, ok in r.pairs:
        assert not ok or (q_pos == r.query and k_pos == r.key - 1)
    assert 0 <= r.matching_share <= 1
    assert set(r.verdicts) >= {"the top head carries the most of the copy edges"}


def test_scaling_a_feature_by_one_changes_nothing_and_by_zero_removes_it(setup):
    from circuits.replacement.local import build_local_replacement

    rep_tokens = setup.tokens("calc: 36+59=")
    rep = build_local_replacement(setup.model, setup.transcoder, rep_tokens)
    f = rep.features
    j = int(torch.argmax(f.activation * (f.layer == 0)))
    feature = (int(f.layer[j]), int(f.position[j]), int(f.feature[j]))
    q = rep.n_pos - 1
    layer = setup.model.cfg.n_layers - 1
    clean = attention_with_feature_scaled(setup, rep_tokens, layer, 0, q, feature[1], None)
    same = attention_with_feature_scaled(setup, rep_tokens, layer, 0, q, feature[1], feature, 1.0)
    assert np.allclose(same, clean, atol=1e-6)
    removed = attention_with_feature_removed(setup, rep_tokens, layer, 0, q, feature[1], feature)
    assert removed == attention_with_feature_scaled(setup, rep_tokens, layer, 0, q, feature[1], feature, 0.0)
    inhibited = attention_with_feature_scaled(setup, rep_tokens, layer, 0, q, feature[1], feature, -1.0)
    assert abs(removed[1] - clean[1]) > 1e-6 and abs(inhibited[1] - clean[1]) > abs(removed[1] - clean[1]) * 0.5
