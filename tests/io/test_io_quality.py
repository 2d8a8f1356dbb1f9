"""QC warnings: not a chest CT, contrast, thick slices, implausible HU, oblique."""

from __future__ import annotations

import numpy as np
import pytest

from hyperct.io import assess_quality, read_ct
from hyperct.volume import CANONICAL_DIRECTION, CTVolume

from .dicom_factory import chest_like_phantom, write_series


def _vol(ph, **metadata) -> CTVolume:
    return CTVolume(hu=ph.hu.astype(np.float32), spacing=ph.spacing, origin=ph.origin, metadata=metadata)


def codes(warnings) -> list[str]:
    return [w.code for w in warnings]


def test_a_plain_chest_gets_no_warning():
    vol = _vol(chest_like_phantom(), SliceThickness=1.0)
    assert assess_quality(vol) == []
    assert vol.warnings == []  # assess_quality does not modify the volume


def test_no_lungs_is_not_a_chest_ct():
    warnings = assess_quality(_vol(chest_like_phantom(lungs=False), SliceThickness=1.0))
    assert codes(warnings) == ["not_chest"]
    assert "lung" in warnings[0].message


def test_empty_volume_has_no_body():
    hu = np.full((20, 30, 30), -1000.0, np.float32)
    hu[0, 0, 0] = 0.0  # not constant
    assert "not_chest" in codes(assess_quality(CTVolume(hu=hu, spacing=(1, 1, 1), origin=(0, 0, 0))))


@pytest.mark.parametrize("pool_hu,expected", [(300.0, True), (45.0, False)])
def test_bright_blood_pool_means_contrast(pool_hu, expected):
    warnings = assess_quality(_vol(chest_like_phantom(blood_pool_hu=pool_hu), SliceThickness=1.0))
    assert ("contrast" in codes(warnings)) is expected
    if expected:
        assert "blood pool" in warnings[codes(warnings).index("contrast")].message


@pytest.mark.parametrize("agent,expected", [("Omnipaque 350", True), ("NONE", False), ("", False)])
def test_contrast_agent_in_header(agent, expected):
    warnings = assess_quality(_vol(chest_like_phantom(), SliceThickness=1.0, ContrastBolusAgent=agent))
    assert ("contrast" in codes(warnings)) is expected


def test_thick_slices_from_tag_or_spacing():
    assert "thick_slices" in codes(assess_quality(_vol(chest_like_phantom(), SliceThickness=6.0)))
    assert "thick_slices" not in codes(assess_quality(_vol(chest_like_phantom(), SliceThickness=5.0)))
    thick = chest_like_phantom(shape=(20, 80, 80), spacing=(7.5, 4.0, 4.0))
    (w,) = [w for w in assess_quality(_vol(thick)) if w.code == "thick_slices"]
    assert "7.50 mm" in w.message


def test_unrescaled_values_are_implausible():
    ph = chest_like_phantom()
    ph.hu = ph.hu + 1024.0  # stored values: air ~ 24
    warnings = assess_quality(_vol(ph, SliceThickness=1.0))
    assert codes(warnings) == ["implausible_hu"]
    assert "unrescaled" in warnings[0].message
    const = CTVolume(hu=np.zeros((20, 8, 8), np.float32), spacing=(1, 1, 1), origin=(0, 0, 0))
    assert "implausible_hu" in codes(assess_quality(const))


def test_oblique_direction():
    a = np.radians(3.0)
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    vol = _vol(chest_like_phantom(), SliceThickness=1.0)
    vol.direction = rot @ CANONICAL_DIRECTION
    (w,) = assess_quality(vol)
    assert w.code == "oblique_snapped" and "3.0 degrees" in w.message


def test_read_ct_carries_header_warnings(tmp_path):
    ph = chest_like_phantom(shape=(20, 80, 80), spacing=(6.0, 4.0, 4.0))
    write_series(ph, tmp_path, tags={"ContrastBolusAgent": "Iomeron 400"})
    vol = read_ct(tmp_path)
    assert codes(vol.warnings) == ["thick_slices", "contrast"]
    assert vol.metadata["ContrastBolusAgent"] == "Iomeron 400"


def test_read_ct_flags_missing_rescale(tmp_path):
    ph = chest_like_phantom(shape=(20, 80, 80), spacing=(2.0, 4.0, 4.0))

    def drop_rescale(ds, m):
        del ds.RescaleSlope, ds.RescaleIntercept

    write_series(ph, tmp_path, intercept=-1024.0, per_slice=drop_rescale)
    vol = read_ct(tmp_path)
    assert codes(vol.warnings) == ["implausible_hu"] and vol.metadata["RescaleMissing"] is True
    np.testing.assert_array_equal(vol.hu, ph.hu + 1024.0)
