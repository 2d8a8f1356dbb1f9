"""NIfTI (nibabel) and NRRD/MHA (SimpleITK) inputs."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from hyperct.errors import (
    CorruptFileError,
    SeriesGeometryError,
    TooFewSlicesError,
    UnsupportedInputError,
)
from hyperct.io import list_series, read_ct
from tests.support.dicom import assert_matches_phantom, asymmetric_phantom, sample_grid

X, Y, Z = np.eye(3)
NIFTI_LAYOUTS = {
    "LPS_order": [X, Y, Z],
    "RAS_order": [-X, -Y, Z],  # the usual NIfTI (dcm2niix) layout
    "slices_first": [-Z, Y, X],
    "coronal_stack": [X, -Z, Y],
    "sagittal_stack": [-Y, -Z, -X],
}


@pytest.mark.parametrize("layout", list(NIFTI_LAYOUTS))
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_in_any_axis_order_reads_the_same_canonical_volume(tmp_path, phantom, layout, suffix):
    from tests.support.dicom import write_nifti

    path = write_nifti(phantom, tmp_path / f"ct{suffix}", NIFTI_LAYOUTS[layout])
    vol = read_ct(path)
    assert_matches_phantom(vol, phantom)
    assert vol.source_format == "nifti" and vol.source_paths == [str(path)]
    # back to the file's own grid (data.T): identical to what nibabel stores
    data = np.asanyarray(nib.load(str(path)).dataobj)
    np.testing.assert_array_equal(vol.to_source_grid(vol.hu), data.T)
    # source_affine is the file affine in LPS
    np.testing.assert_allclose(
        vol.source_affine, np.diag([-1, -1, 1, 1]) @ nib.load(str(path)).affine, atol=1e-5
    )


def test_nifti_header_scaling_and_rescale_override(tmp_path, phantom):
    from tests.support.dicom import write_nifti

    scaled = write_nifti(phantom, tmp_path / "scaled.nii.gz", [X, Y, Z], header_scaled=True)
    slope = float(nib.load(str(scaled)).dataobj.slope)  # the file's scl_slope (nibabel moves it here)
    assert slope not in (0.0, 1.0)  # nibabel packed float HU into int16 with its own scaling
    vol = read_ct(scaled)
    assert_matches_phantom(vol, phantom, atol=float(slope))

    raw = write_nifti(phantom, tmp_path / "raw.nii.gz", [-X, -Y, Z], raw_offset=-1024.0)
    assert float(np.asanyarray(nib.load(str(raw)).dataobj).min()) >= 0  # stored values, not HU
    vol = read_ct(raw, rescale=(1.0, -1024.0))
    assert_matches_phantom(vol, phantom)
    assert vol.metadata["RescaleOverride"] == [1.0, -1024.0]


def test_nifti_with_only_a_qform_or_only_an_sform(tmp_path, phantom):
    from tests.support.dicom import write_nifti

    only_q = write_nifti(phantom, tmp_path / "q.nii", [-X, -Y, Z], sform=False)
    only_s = write_nifti(phantom, tmp_path / "s.nii", [-X, -Y, Z], qform=False)
    assert read_ct(only_q).metadata["AffineSource"] == "qform"
    assert read_ct(only_s).metadata["AffineSource"] == "sform"
    assert_matches_phantom(read_ct(only_q), phantom)


def test_nifti_conflicting_sform_and_qform_is_rejected(tmp_path, phantom):
    from tests.support.dicom import write_nifti

    other = np.diag([-0.7, -0.8, 2.0, 1.0])  # a different (flipped-z) orientation
    path = write_nifti(phantom, tmp_path / "conflict.nii.gz", [-X, -Y, Z], qform=other)
    with pytest.raises(SeriesGeometryError) as err:
        read_ct(path)
    assert "conflict.nii.gz" in str(err.value) and "sform and qform" in str(err.value)


def test_nifti_without_orientation_or_with_singular_affine_is_rejected(tmp_path, phantom):
    from tests.support.dicom import write_nifti

    none = write_nifti(phantom, tmp_path / "none.nii", [X, Y, Z], sform=False, qform=False)
    with pytest.raises(SeriesGeometryError, match="neither sform nor qform"):
        read_ct(none)
    singular = np.eye(4)
    singular[2, 2] = 0.0
    bad = write_nifti(phantom, tmp_path / "singular.nii", [X, Y, Z], sform=singular, qform=False)
    with pytest.raises(SeriesGeometryError) as err:
        read_ct(bad)
    assert "singular.nii" in str(err.value) and "singular" in str(err.value)
    sheared = np.array([[-0.7, 0, 0, 0], [0, -0.8, 0.5, 0], [0, 0, 2.0, 0], [0, 0, 0, 1]])
    shear = write_nifti(phantom, tmp_path / "sheared.nii", [X, Y, Z], sform=sheared, qform=False)
    with pytest.raises(SeriesGeometryError, match="sheared"):
        read_ct(shear)


def test_nifti_4d_too_few_slices_truncated_and_nan(tmp_path, phantom):
    img4 = nib.Nifti1Image(np.zeros((8, 8, 20, 3), np.int16), np.eye(4))
    nib.save(img4, str(tmp_path / "4d.nii"))
    with pytest.raises(UnsupportedInputError, match="4d.nii"):
        read_ct(tmp_path / "4d.nii")

    thin = nib.Nifti1Image(np.zeros((64, 64, 10), np.int16), np.eye(4))
    nib.save(thin, str(tmp_path / "thin.nii.gz"))
    with pytest.raises(TooFewSlicesError, match="thin.nii.gz"):
        read_ct(tmp_path / "thin.nii.gz")
    assert read_ct(tmp_path / "thin.nii.gz", min_slices=10).shape == (10, 64, 64)

    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 20), np.int16), np.eye(4)), str(good))
    (tmp_path / "cut.nii.gz").write_bytes(good.read_bytes()[:200])
    with pytest.raises(CorruptFileError, match="cut.nii.gz"):
        read_ct(tmp_path / "cut.nii.gz")
    (tmp_path / "junk.nii").write_bytes(gzip.compress(b"not a nifti") * 3)
    with pytest.raises(CorruptFileError, match="junk.nii"):
        read_ct(tmp_path / "junk.nii")

    arr, origin, spacing = sample_grid(phantom, [X, Y, Z])
    arr = arr.astype(np.float32)
    arr[0, 0, 0] = np.nan
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # LPS axes -> RAS affine
    affine[:3, 3] = [-origin[0], -origin[1], origin[2]]
    nib.save(nib.Nifti1Image(arr, affine), str(tmp_path / "nan.nii"))
    vol = read_ct(tmp_path / "nan.nii")
    assert vol.shape == phantom.hu.shape
    assert np.count_nonzero(vol.hu == -1000.0) >= 1 and np.all(np.isfinite(vol.hu))
    assert any(w.code == "nonfinite_values" and "1 NaN" in w.message for w in vol.warnings)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mhd"])
def test_itk_formats_through_simpleitk(tmp_path, suffix):
    ph = asymmetric_phantom(shape=(18, 20, 22), spacing=(1.5, 0.9, 0.6), seed=9)
    dirs = [-X, Z, Y]  # an unusual grid: i runs L->R, j superior, k posterior
    arr, origin, spacing = sample_grid(ph, dirs)  # axes (i, j, k)
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)).astype(np.int16))
    img.SetSpacing(spacing)
    img.SetOrigin(origin.tolist())
    img.SetDirection(np.stack(dirs, axis=1).ravel().tolist())
    path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(img, str(path))
    vol = read_ct(path)
    assert_matches_phantom(vol, ph)
    assert vol.source_format == {".nrrd": "nrrd", ".mha": "mha", ".mhd": "mha"}[suffix]
    assert list_series(path)[0].selected


def test_folder_with_a_volume_file_but_no_dicom_points_to_the_file(tmp_path, phantom):
    from hyperct.errors import NoImageDataError
    from tests.support.dicom import write_nifti

    write_nifti(phantom, tmp_path / "ct.nii.gz", [X, Y, Z])
    with pytest.raises(NoImageDataError) as err:
        read_ct(tmp_path)
    assert "ct.nii.gz" in str(err.value) and "open the volume file itself" in str(err.value)


def test_unsupported_and_missing_paths(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UnsupportedInputError, match="notes.txt"):
        read_ct(tmp_path / "notes.txt")
    with pytest.raises(UnsupportedInputError, match="nowhere"):
        read_ct(tmp_path / "nowhere")
    with pytest.raises(UnsupportedInputError, match="empty selection"):
        read_ct([])
