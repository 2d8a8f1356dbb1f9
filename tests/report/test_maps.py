"""Saliency NIfTI maps are written in the input's own geometry (shape, affine, voxel order)."""

from __future__ import annotations

import gzip
from io import BytesIO

import nibabel as nib
import numpy as np
import pytest

from hyperct.io import read_ct
from hyperct.report.maps import saliency_nifti_bytes, source_affine_ras
from tests.support.scan_files import oblique_order_nifti, write_dicom_series


def _load(data: bytes) -> nib.Nifti1Image:
    raw = gzip.decompress(data)
    fh = nib.FileHolder(fileobj=BytesIO(raw))
    return nib.Nifti1Image.from_file_map({"header": fh, "image": fh})


def test_a_marker_on_the_canonical_grid_lands_on_the_same_voxel_of_the_input_file(tmp_path):
    marker = (3, 25, 9)
    data, affine = oblique_order_nifti(tmp_path / "scan.nii.gz", marker=marker)
    vol = read_ct(tmp_path / "scan.nii.gz")
    assert not vol.reorientation.is_identity  # the test needs a non-canonical input
    canonical_map = (vol.hu == 1500).astype(np.float32)
    assert canonical_map.sum() == 1
    img = _load(saliency_nifti_bytes(vol, canonical_map, "test"))
    assert img.shape == data.shape
    np.testing.assert_allclose(img.affine, affine, atol=1e-5)
    np.testing.assert_allclose(img.get_sform(), affine, atol=1e-5)
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    # compact: uint8 on disk, the scaling (1/255) in the header, read back as [0, 1]
    assert img.get_data_dtype() == np.uint8
    stored = np.asarray(img.dataobj.get_unscaled())
    assert stored.dtype == np.uint8 and tuple(int(v) for v in np.argwhere(stored == 255)[0]) == marker
    assert img.dataobj.slope == pytest.approx(1 / 255) and img.dataobj.inter == 0
    out = img.get_fdata()
    assert out.max() == pytest.approx(1.0) and out.sum() == pytest.approx(1.0)
    assert "uint8 x 1/255" in img.header["descrip"].tobytes().decode()


def test_maps_are_compact_and_keep_their_values():
    from hyperct.report.maps import saliency_nifti_bytes as nifti
    from hyperct.volume import CTVolume

    vol = CTVolume(hu=np.zeros((40, 128, 128), np.float32), spacing=(2, 1, 1), origin=(0, 0, 0))
    k, j, i = np.indices(vol.shape)
    m = np.exp(-((k - 20) ** 2 + (j - 60) ** 2 + (i - 70) ** 2) / 200.0).astype(np.float32)
    blob = nifti(vol, m)
    assert len(blob) < m.nbytes / 20  # float32 would be 2.6 MB; uint8 + gzip is far smaller
    back = _load(blob).get_fdata().transpose(2, 1, 0)
    assert np.abs(back - m).max() <= 0.5 / 255 + 1e-6


def test_dicom_input_map_uses_the_series_own_grid(tmp_path):
    write_dicom_series(tmp_path / "dcm", shape=(18, 24, 20))
    vol = read_ct(tmp_path / "dcm")
    m = np.zeros(vol.shape, np.float32)
    m[2, 5, 7] = 1.0  # canonical (k, j, i)
    img = _load(saliency_nifti_bytes(vol, m))
    assert img.shape == (20, 24, 18)  # (columns, rows, slices)
    i, j, k = np.argwhere(np.asarray(img.dataobj.get_unscaled()) == 255)[0]
    ras = img.affine @ [i, j, k, 1]
    lps = vol.index_to_lps([2, 5, 7])
    np.testing.assert_allclose([-ras[0], -ras[1], ras[2]], lps, atol=1e-4)
    np.testing.assert_allclose(source_affine_ras(vol)[:3, 3] * [-1, -1, 1], vol.source_affine[:3, 3])


def test_a_map_of_the_wrong_shape_is_refused(tmp_path):
    oblique_order_nifti(tmp_path / "scan.nii.gz")
    vol = read_ct(tmp_path / "scan.nii.gz")
    with pytest.raises(ValueError, match="does not match"):
        saliency_nifti_bytes(vol, np.zeros((3, 3, 3), np.float32))
