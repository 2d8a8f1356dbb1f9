"""Fixtures for the engine tests (the tiny model itself: ``tests.support.models``)."""

from __future__ import annotations

import pytest
import torch

from tests.support.models import tiny_model


@pytest.fixture
def tiny():
    return tiny_model()


@pytest.fixture
def pixels():
    g = torch.Generator().manual_seed(1)
    # 2 volumes x 3 images x 3 x 48 x 48 (3x3 patches): the model handles any number of images.
    return torch.randn(2, 3, 3, 48, 48, generator=g)
