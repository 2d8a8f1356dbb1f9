"""Fixtures for the reader tests (synthetic series come from ``tests.support.dicom``)."""

from __future__ import annotations

import pytest

from tests.support.dicom import Phantom, asymmetric_phantom


@pytest.fixture(scope="session")
def phantom() -> Phantom:
    return asymmetric_phantom()
