"""Shared small phantoms (module-scoped caches keep the folder fast)."""

from __future__ import annotations

import functools

import pytest

from hyperct.phantom import generate


@functools.lru_cache(maxsize=16)
def cached(seed: int, findings: tuple = (), matrix: int = 96, n_slices: int = 60):
    """generate() with hashable arguments (findings as a tuple of (id, severity) pairs)."""
    return generate(seed, dict(findings), matrix=matrix, n_slices=n_slices)


@pytest.fixture(scope="session")
def normal_small():
    return cached(3)
