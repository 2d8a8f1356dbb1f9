"""benchmarks/level_oracle.py: a prediction that knows each image's offset from a station
explains targets made of that offset alone, and one told the label explains a finding that adds
tissue at the station; R2 is per station, over every image."""

from __future__ import annotations

import numpy as np

from tests.support.benchmarks import load_benchmark


def _phantoms(n: int, seed: int):
    """Per-image tissue made of a profile of the z offset, plus 1 mL at the station's own image in the
    volumes with the finding (a third of them)."""
    rng = np.random.default_rng(seed)
    offsets = (np.arange(55)[None, :, None] * 6.0 - rng.uniform(100, 230, size=(n, 1, 2))).astype(np.float32)
    tissue = np.exp(-((offsets / 8.0) ** 2)) + rng.normal(0, 0.02, size=offsets.shape)
    labels = (rng.random(n) < 0.33).astype(int)
    tissue[labels == 1] += (np.abs(offsets[labels == 1]) < 3.0) * 1.0
    return tissue.astype(np.float32), offsets, labels


def test_the_level_explains_the_profile_and_the_label_the_finding():
    mod = load_benchmark("level_oracle")
    tt, ot, yt = _phantoms(300, 0)
    tv, ov, yv = _phantoms(200, 1)
    level = mod.level_expected(ov, mod.level_table(tt[yt == 0], ot[yt == 0]))
    level_r2, label_r2 = mod.r2(level, tv), mod.r2(mod.by_label(tt, ot, yt, ov, yv), tv)
    assert level_r2.shape == (2,)
    assert (level_r2 > 0.3).all() and (level_r2 < 0.9).all()  # the profile, not the finding's tissue
    assert (label_r2 > 0.95).all()  # both together: all but the noise
    assert np.abs(mod.r2(np.full_like(tv, tv.mean()), tv)).max() < 0.02  # a constant explains nothing


def _hearts(n: int, seed: int):
    """Per-image shares of two structures: one profile around a centre that moves from phantom to
    phantom, each phantom's structures larger or smaller by a factor of its own."""
    rng = np.random.default_rng(seed)
    centre = rng.uniform(20, 35, size=(n, 1))
    size = rng.uniform(0.6, 1.4, size=(n, 1, 2))
    profile = np.exp(-(((np.arange(55)[None] - centre) / 4.0) ** 2))[..., None]
    return (profile * size * np.array([10.0, 3.0])).astype(np.float32)


def test_the_heart_level_knows_where_the_heart_is_and_the_total_how_large():
    mod = load_benchmark("level_oracle")
    ht, hv = _hearts(300, 0), _hearts(200, 1)
    offsets = mod.heart_offsets(hv, 0)
    assert offsets.shape == (200, 55)
    peak = hv[..., 0].argmax(1)
    assert (np.abs(offsets[np.arange(200), peak]) <= 1).all()  # the centroid is at the profile's peak
    level = mod.heart_level(ht, mod.heart_offsets(ht, 0), offsets)
    level_r2, scaled_r2 = mod.r2(level, hv), mod.r2(mod.scaled_by_total(level, hv), hv)
    assert (level_r2 > 0.5).all() and (level_r2 < 0.95).all()  # where, not how large
    assert (scaled_r2 > 0.98).all()  # how large too: all of it
