"""Independent, named random streams.

Every component of a phantom draws from its own stream, keyed by ``(seed, name)``. Switching a
finding on therefore never changes another component's random draws: the anatomy, the noise and
every other finding come out bit-identical, which is what makes "the finding changes the image only
inside its mask" testable.
"""

from __future__ import annotations

import zlib

import numpy as np


def stream(seed: int, name: str, *extra: int) -> np.random.Generator:
    """A generator for component ``name`` of phantom ``seed`` (``extra`` sub-keys, e.g. an index)."""
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    key = zlib.crc32(name.encode("utf-8"))
    return np.random.default_rng(np.random.SeedSequence([int(seed), key, *(int(e) for e in extra)]))
