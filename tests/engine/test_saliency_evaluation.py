"""The benchmark's ground truth in the token frame (hyperct.saliency.evaluation) on the grid of the
model it judges: patch 16 (9 x 9 tokens per image) and patch 8 (18 x 18) describe the same mask."""

from __future__ import annotations

import numpy as np
import pytest

from hyperct.saliency.evaluation import (
    grid_shape,
    hit_table,
    lateral_share,
    map_sides,
    side_columns,
    token_fraction,
)
from hyperct.volume import CTVolume


def _block_mask(shape=(110, 144, 144)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[30:50, 20:44, 100:120] = True
    return m


def test_grid_shape_follows_the_patch_and_rejects_one_that_does_not_divide_the_image():
    assert grid_shape(16) == (55, 9, 9) and grid_shape(8) == (55, 18, 18)
    with pytest.raises(ValueError, match="does not divide"):
        grid_shape(10)


def test_patch_8_token_fractions_average_to_the_patch_16_fractions_of_the_same_mask():
    m = _block_mask()
    f16, f8 = token_fraction(m, 16), token_fraction(m, 8)
    assert f16.shape == (55, 9, 9) and f8.shape == (55, 18, 18)
    assert np.allclose(f8.reshape(55, 9, 2, 9, 2).mean(axis=(2, 4)), f16, atol=1e-6)
    assert 0 < f8.max() <= 1 and f8.sum() > 0


def test_hit_tables_mark_tokens_whose_centres_lie_on_the_mask_at_either_patch():
    m = _block_mask()
    spacing = (1.0, 1.0, 1.0)
    for patch in (16, 8):
        hits = hit_table(m, spacing, 0.0, patch)
        frac = token_fraction(m, patch)
        assert hits.shape == grid_shape(patch)
        assert hits.any() and (frac[hits] > 0).all()  # a centre on the mask: the token overlaps it
    assert hit_table(m, spacing, 0.0, 8).sum() > hit_table(m, spacing, 0.0, 16).sum()


def test_side_columns_at_patch_8_split_each_patch_16_column_without_changing_sides():
    hu = np.full((10, 64, 144), -1000.0, np.float32)
    hu[:, 8:56, 20:124] = 40.0  # body centred on column 71.5
    vol = CTVolume(hu=hu, spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    c16, c8 = side_columns(vol, 16), side_columns(vol, 8)
    assert c16.shape == (9,) and c8.shape == (18,)
    for col, side in enumerate(c16):
        if side:
            assert list(c8[2 * col : 2 * col + 2]) == [side, side]
    assert (c8 == "R").sum() >= 2 * (c16 == "R").sum() and (c8 == "").sum() <= (c16 == "").sum()


def test_lateral_share_counts_positive_mass_on_one_side_and_leaves_the_midline_column_out():
    columns = np.array(["R", "R", "R", "R", "", "L", "L", "L", "L"])
    m = np.zeros((55, 9, 9), np.float32)
    m[3, 4, 1] = 3.0  # right
    m[10, 2, 7] = 1.0  # left
    m[20, 5, 4] = 50.0  # the column straddling the midline: on neither side
    m[30, 1, 8] = -7.0  # negative evidence counts as none
    assert lateral_share(m, columns, "R") == pytest.approx(0.75)
    assert lateral_share(m, columns, "L") == pytest.approx(0.25)
    only_midline = np.zeros_like(m)
    only_midline[:, :, 4] = 1.0
    assert lateral_share(only_midline, columns, "R") is None


def test_map_sides_reads_a_pixel_map_by_the_patients_side_of_its_mass_and_of_its_peak():
    hu = np.full((10, 144, 144), -1000.0, np.float32)
    hu[:, 20:124, 20:124] = 40.0  # body centred on column 71.5
    vol = CTVolume(hu=hu, spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    cols = side_columns(vol)
    right, left, middle = list(cols).index("R"), list(cols).index("L"), list(cols).index("")
    pixels = np.zeros((165, 144, 144), np.float32)  # a pixel map, as the gradient methods give
    pixels[30, 70, right * 16 + 3] = 3.0
    pixels[90, 40, left * 16 + 8] = 1.0
    assert map_sides(pixels, vol) == (pytest.approx(0.75), "R")
    pixels[60, 60, middle * 16 + 5] = 9.0  # the peak across the midline: no side, share unchanged
    assert map_sides(pixels, vol) == (pytest.approx(0.75), "")
