"""Tissues of a normal phantom sit in their Hounsfield ranges (non-contrast chest CT)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from tests.support.phantoms import cached

# (tissue label names, (low, high) bounds of the median HU) for a non-contrast chest CT
RANGES = {
    "lung": (("lung",), (-910.0, -780.0)),
    "fat": (("fat", "mediastinal_fat", "epicardial_fat"), (-125.0, -75.0)),
    "muscle": (("muscle",), (25.0, 65.0)),
    "blood": (("blood",), (25.0, 55.0)),
    "myocardium": (("myocardium",), (35.0, 65.0)),
    "liver": (("liver",), (20.0, 75.0)),
    "trabecular_bone": (("trabecular_bone",), (110.0, 400.0)),
}


@pytest.fixture(scope="module", params=[3, 17])
def phantom(request):
    return cached(request.param, matrix=128, n_slices=100)


@pytest.mark.parametrize("name", sorted(RANGES))
def test_tissue_median_in_range(phantom, name):
    labels, (lo, hi) = RANGES[name]
    m = phantom.tissue_mask(*labels)
    core = ndimage.binary_erosion(m, iterations=1)  # away from partial-volume edges
    assert core.sum() > 50, f"too few {name} voxels"
    med = float(np.median(phantom.volume.hu[core]))
    assert lo <= med <= hi, f"{name}: median {med:.0f} HU not in [{lo}, {hi}]"


def test_bone_and_air(phantom):
    hu = phantom.volume.hu
    cortical = phantom.tissue_mask("cortical_bone")
    assert np.percentile(hu[cortical], 90) > 600.0  # cortical bone is bright even at 3 mm pixels
    air = phantom.tissue_mask("air")
    assert np.median(hu[air]) < -950.0
    assert hu.min() >= -1024.0 and hu.max() <= 3071.0


def test_lungs_are_most_of_the_chest(phantom):
    lung = phantom.tissue_mask("lung", "lung_vessel", "airway_lumen", "airway_wall")
    body = (phantom.tissue != 0) & (phantom.tissue != 25)  # not air, not the table
    frac = lung.sum() / body.sum()
    assert 0.12 < frac < 0.6
    # lungs on both sides of the midline, about equal
    i_mid = phantom.volume.shape[2] // 2
    right, left = lung[:, :, :i_mid].sum(), lung[:, :, i_mid:].sum()
    assert 0.6 < right / left < 1.7
