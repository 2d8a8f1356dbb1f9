"""Small ``hyperct.phantom`` phantoms, generated once per argument set (keeps the phantom tests fast)."""

from __future__ import annotations

import functools

from hyperct.phantom import generate


@functools.lru_cache(maxsize=16)
def cached(seed: int, findings: tuple = (), matrix: int = 96, n_slices: int = 60):
    """generate() with hashable arguments (findings as a tuple of (id, severity) pairs)."""
    return generate(seed, dict(findings), matrix=matrix, n_slices=n_slices)
