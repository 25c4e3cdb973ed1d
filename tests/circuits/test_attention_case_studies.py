"""The measured outcome of `circuits demo attention-two-hop` on the real `world` model and its
default CLT (docs/case_studies.md; built on first use: minutes; marked slow).

On "Fact: the capital of the state containing Dallas is", one head of block 0 carries nearly all
the kept edges from " Dallas" to the last position; it attends from " is" to " Dallas" more than to
any other non-BOS key; its QK attribution says why: the key side is the " Dallas" token embedding
(the top key-side contributor), met by the query's constant (position terms and biases) and the
" is" embedding - no feature, as a block-0 head reads only embeddings.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world_rm():
    from circuits.replacement.model import ReplacementModel

    return ReplacementModel.load("world", progress=False)


def test_dallas_head_looks_at_the_city_because_of_its_token(world_rm):
    from circuits.studies.demos.attention_two_hop import run_attention_two_hop

    r = run_attention_two_hop(world_rm)
    layer, head, share = r.head_shares[0]
    assert layer == 0 and share > 0.8
    assert r.city_rank == 1 and r.attention_to_city > 0.5
    top_key = r.k_top[0][0]
    assert top_key.startswith("E_") and top_key.endswith(f"_{r.city_pos}")  # the " Dallas" embedding
    query_ids = [i for i, _, _ in r.q_top]
    assert all(i.startswith(("E_", "bias")) for i in query_ids)  # block 0: no feature on the query side
    assert all(r.verdicts.values())
