"""Shared fixtures for the reader tests (synthetic series come from ``dicom_factory``)."""

from __future__ import annotations

import pytest

from .dicom_factory import Phantom, asymmetric_phantom


@pytest.fixture(scope="session")
def phantom() -> Phantom:
    return asymmetric_phantom()
