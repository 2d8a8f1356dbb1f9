"""Fixtures for the training tests (helpers: ``tests.support.training``)."""

from __future__ import annotations

import pytest

from tests.support.training import SignalDataset


@pytest.fixture
def synthetic():
    return SignalDataset(12, 0), SignalDataset(8, 1)
