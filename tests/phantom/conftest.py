"""Fixtures for the phantom tests (the cached generator: ``tests.support.phantoms``)."""

from __future__ import annotations

import pytest

from tests.support.phantoms import cached


@pytest.fixture(scope="session")
def normal_small():
    return cached(3)
