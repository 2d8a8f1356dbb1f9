"""Series geometry: gaps, duplicates, uneven spacing, tilt, mixed stacks, missing tags, oblique, too few."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from hyperct.errors import NotCTError, SeriesGeometryError, TooFewSlicesError
from hyperct.io import list_series, read_ct
from hyperct.volume import CANONICAL_DIRECTION
from tests.support.dicom import AXIAL, CORONAL, assert_matches_phantom, asymmetric_phantom, write_series


def test_missing_slice_is_a_gap(tmp_path, phantom):
    files = write_series(phantom, tmp_path)
    files[7].unlink()
    with pytest.raises(SeriesGeometryError) as err:
        read_ct(tmp_path)
    msg = str(err.value)
    assert "gap" in msg and "1 missing" in msg
    assert files[6].name in msg and files[8].name in msg and "'Chest 1.0 test'" in msg
    (info,) = list_series(tmp_path)
    assert info.status == "skipped" and info.reason.startswith("geometry: a gap")


def test_duplicate_slices_are_rejected(tmp_path, phantom):
    files = write_series(phantom, tmp_path)
    ds = pydicom.dcmread(files[4])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()  # a second copy of slice 4
    ds.save_as(tmp_path / "copy_of_slice_4", enforce_file_format=True)
    with pytest.raises(SeriesGeometryError) as err:
        read_ct(tmp_path)
    msg = str(err.value)
    assert "duplicate" in msg and "copy_of_slice_4" in msg and files[4].name in msg


def test_uneven_spacing_is_rejected(tmp_path, phantom):
    def nudge(ds, m):
        if m == 9:
            ds.ImagePositionPatient = [
                ds.ImagePositionPatient[0],
                ds.ImagePositionPatient[1],
                ds.ImagePositionPatient[2] + 0.6,
            ]

    write_series(phantom, tmp_path, per_slice=nudge)
    with pytest.raises(SeriesGeometryError, match="uneven slice spacing"):
        read_ct(tmp_path)


def test_small_position_jitter_is_tolerated(tmp_path, phantom):
    rng = np.random.default_rng(0)

    def jitter(ds, m):
        ds.ImagePositionPatient = [
            float(v) + float(rng.uniform(-0.02, 0.02)) for v in ds.ImagePositionPatient
        ]

    write_series(phantom, tmp_path, per_slice=jitter)
    vol = read_ct(tmp_path)
    np.testing.assert_array_equal(vol.hu, phantom.hu)
    assert vol.spacing[0] == pytest.approx(2.0, abs=0.01)


def test_gantry_tilt_rejected_unless_resampling_is_requested(tmp_path):
    ph = asymmetric_phantom(shape=(16, 24, 20), spacing=(2.0, 0.8, 0.7), seed=11)
    write_series(ph, tmp_path, shear_px=(1, 0), tags={"GantryDetectorTilt": 21.8}, order="shuffled")
    with pytest.raises(SeriesGeometryError) as err:
        read_ct(tmp_path)
    msg = str(err.value)
    assert "gantry tilt" in msg and "resample_tilt=True" in msg and str(tmp_path) in msg
    assert "21.8" in msg  # atan(0.8 mm shift / 2 mm step)

    vol = read_ct(tmp_path, resample_tilt=True)
    codes = [w.code for w in vol.warnings]
    assert "gantry_tilt_resampled" in codes
    assert vol.shape == ph.hu.shape and vol.metadata["GantryTiltResampledDegrees"] == pytest.approx(
        21.8, abs=0.05
    )
    # voxels that stayed inside the acquired field are back where they belong; the rest is air.
    # Slice m (ascending z, canonical k = 15 - m) was acquired with its field shifted m rows posterior.
    for k in range(ph.hu.shape[0]):
        m = ph.hu.shape[0] - 1 - k
        np.testing.assert_array_equal(vol.hu[k, m:], ph.hu[k, m:])
        assert np.all(vol.hu[k, :m] == -1000.0)
    np.testing.assert_allclose(vol.origin, ph.origin, atol=1e-4)


def test_tilt_header_without_shear_is_not_a_tilt(tmp_path, phantom):
    write_series(phantom, tmp_path, tags={"GantryDetectorTilt": 12.0})
    assert_matches_phantom(read_ct(tmp_path), phantom)


@pytest.mark.parametrize("keyword", ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"])
def test_missing_geometry_tags_are_rejected(tmp_path, phantom, keyword):
    def drop(ds, m):
        if m == 5:
            delattr(ds, keyword)

    files = write_series(phantom, tmp_path, per_slice=drop)
    with pytest.raises(SeriesGeometryError) as err:
        read_ct(tmp_path)
    msg = str(err.value)
    assert keyword in msg and files[5].name in msg


def test_mixed_matrix_size_is_rejected(tmp_path, phantom):
    files = write_series(phantom, tmp_path)
    ds = pydicom.dcmread(files[3])
    ds.Rows, ds.Columns = 16, 16
    ds.PixelData = np.zeros((16, 16), np.int16).tobytes()
    ds.save_as(files[3], enforce_file_format=True)
    with pytest.raises(SeriesGeometryError) as err:
        read_ct(tmp_path)
    msg = str(err.value)
    assert "mixes matrix sizes" in msg and files[3].name in msg


def test_mixed_orientation_is_rejected(tmp_path, phantom):
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))

    def rotate(ds, m):
        if m in (3, 4):
            ds.ImageOrientationPatient = [c, s, 0.0, -s, c, 0.0]

    files = write_series(phantom, tmp_path, per_slice=rotate)
    with pytest.raises(SeriesGeometryError) as err:
        read_ct(tmp_path)
    msg = str(err.value)
    assert "mixes orientations" in msg and (files[3].name in msg or files[4].name in msg)


def test_too_few_slices(tmp_path):
    ph = asymmetric_phantom(shape=(15, 12, 12), seed=3)
    write_series(ph, tmp_path)
    with pytest.raises(TooFewSlicesError) as err:
        read_ct(tmp_path)
    assert "only 15 slice(s)" in str(err.value) and "min_slices" in str(err.value)
    np.testing.assert_array_equal(read_ct(tmp_path, min_slices=15).hu, ph.hu)


def test_non_ct_modality_is_refused(tmp_path, phantom):
    write_series(phantom, tmp_path, modality="MR")
    with pytest.raises(NotCTError) as err:
        read_ct(tmp_path)
    assert "MR, not CT" in str(err.value) and str(tmp_path) in str(err.value)


def test_oblique_acquisition_is_snapped_with_a_warning(tmp_path, phantom):
    angle = np.radians(4.0)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    write_series(phantom, tmp_path / "straight", orientation=CORONAL)
    write_series(phantom, tmp_path / "oblique", orientation=CORONAL, rotate=rot, order="shuffled")
    straight, oblique = read_ct(tmp_path / "straight"), read_ct(tmp_path / "oblique")
    np.testing.assert_array_equal(oblique.hu, straight.hu)  # same voxels on the nearest axis-aligned grid
    np.testing.assert_allclose(oblique.direction, rot @ CANONICAL_DIRECTION, atol=1e-6)  # true direction kept
    np.testing.assert_allclose(oblique.spacing, straight.spacing, atol=1e-6)
    # physical positions follow the rotation
    for kji in [(0, 0, 0), (5, 7, 9)]:
        np.testing.assert_allclose(oblique.index_to_lps(kji), rot @ straight.index_to_lps(kji), atol=1e-3)
    (w,) = [w for w in oblique.warnings if w.code == "oblique_snapped"]
    assert "4.0 degrees" in w.message
    assert not [w for w in straight.warnings if w.code == "oblique_snapped"]


def test_missing_slice_in_the_bigger_series_falls_back_with_a_warning(tmp_path):
    big = asymmetric_phantom(shape=(24, 12, 12), spacing=(1.0, 1.0, 1.0), seed=1)
    small = asymmetric_phantom(shape=(16, 12, 12), spacing=(2.0, 1.0, 1.0), seed=2)
    big_uid = generate_uid()
    files = write_series(big, tmp_path, series_uid=big_uid, prefix="A")
    write_series(small, tmp_path, prefix="B")
    files[10].unlink()
    vol = read_ct(tmp_path)
    np.testing.assert_array_equal(vol.hu, small.hu)
    (w,) = [w for w in vol.warnings if w.code == "series_skipped"]
    assert big_uid in w.message and "gap" in w.message
    with pytest.raises(SeriesGeometryError):
        read_ct(tmp_path, series_uid=big_uid)


def test_series_split_over_folders_and_a_copy_elsewhere(tmp_path, phantom):
    """Reading a parent folder that holds the same series twice finds duplicates (never merges)."""
    write_series(phantom, tmp_path / "a", orientation=AXIAL)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    with pytest.raises(SeriesGeometryError, match="duplicate"):
        read_ct(tmp_path)
