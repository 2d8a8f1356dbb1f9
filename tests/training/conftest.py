"""Fixtures for the training tests (helpers: ``tests.support.training``)."""

from __future__ import annotations

import pytest

# tiny_config is re-exported: tests/training/test_pretrain_v1.py still imports it from here
from tests.support.training import SignalDataset
from tests.support.training import tiny_config as tiny_config


@pytest.fixture
def synthetic():
    return SignalDataset(12, 0), SignalDataset(8, 1)
