"""Fixtures shared by the intervention tests: a tiny model + transcoder pair and a prompt's tokens."""

from __future__ import annotations

import pytest

from tests.circuits.test_interventions import make_tiny_pair


@pytest.fixture(scope="module")
def pair(one_thread):
    return make_tiny_pair()


@pytest.fixture(scope="module")
def tokens(pair):
    from circuits.prompts import tokenize_prompt

    return tokenize_prompt(pair[0], "fact : the capital of the state containing dallas is")
