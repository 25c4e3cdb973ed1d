"""Fixtures of the transcoder package's tests: the tiny model they train on (one torch thread)."""

from __future__ import annotations

import pytest
import torch

from tests.transcoders.tiny import tiny_model


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return tiny_model()
