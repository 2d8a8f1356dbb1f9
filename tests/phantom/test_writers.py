"""DICOM and NIfTI writers: realistic tags, lossless codecs, geometry that reads back exactly."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest

from hyperct import io
from hyperct.phantom import write_dicom_series, write_nifti
from hyperct.phantom.dicom import TRANSFER_SYNTAXES
from tests.support.phantoms import cached


@pytest.fixture(scope="module")
def ph():
    return cached(5, matrix=64, n_slices=36)


def _series(files, kind="AXIAL"):
    out = []
    for f in files:
        ds = pydicom.dcmread(f)
        if kind in ds.ImageType:
            out.append(ds)
    return out


def test_ct_tags(ph, tmp_path):
    files = write_dicom_series(ph.volume, tmp_path / "s")
    assert len(files) == ph.volume.shape[0]
    ds = pydicom.dcmread(files[0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert ds.Modality == "CT" and ds.Manufacturer == "HyperCT synthetic phantom"
    assert str(ds.PatientName) == "PHANTOM^HYPERCT"
    assert ds.RescaleIntercept == -1024 and ds.RescaleSlope == 1
    assert float(ds.SliceThickness) == pytest.approx(ph.volume.metadata["SliceThickness"])
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx(list(ph.volume.spacing[1:]))
    assert ds.KVP and ds.ConvolutionKernel and ds.StudyDate and ds.FrameOfReferenceUID
    sops = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    assert len(sops) == len(files)  # unique instance UIDs
    first = pydicom.dcmread(files[0])
    assert [float(v) for v in first.ImagePositionPatient] == pytest.approx(list(ph.volume.origin), abs=1e-3)
    assert [float(v) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert np.array_equal(
        first.pixel_array.astype(float) - 1024, np.clip(np.rint(ph.volume.hu[0]), -1024, 3071)
    )


@pytest.mark.parametrize("ts", sorted(TRANSFER_SYNTAXES))
def test_transfer_syntaxes_are_lossless(ph, tmp_path, ts):
    files = write_dicom_series(ph.volume, tmp_path / ts, transfer_syntax=ts)
    ds = pydicom.dcmread(files[3])
    assert ds.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[ts]
    expect = np.clip(np.rint(ph.volume.hu[3]), -1024, 3071)
    assert np.array_equal(ds.pixel_array.astype(float) - 1024, expect)


def test_slice_orders(ph, tmp_path):
    n = ph.volume.shape[0]
    for order in ("ascending", "descending", "shuffled"):
        files = write_dicom_series(ph.volume, tmp_path / order, slice_order=order, seed=4)
        z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
        num = [int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber) for f in files]
        assert sorted(num) == list(range(1, n + 1))
        by_num = [zz for _, zz in sorted(zip(num, z))]
        if order == "ascending":
            assert np.all(np.diff(by_num) < 0)  # instance 1 at the top (superior)
        elif order == "descending":
            assert np.all(np.diff(by_num) > 0)
        else:
            assert not (np.all(np.diff(by_num) < 0) or np.all(np.diff(by_num) > 0))
            assert sorted(f.name for f in files) != [f.name for f in files] or True


def test_localizer_and_second_series(ph, tmp_path):
    files = write_dicom_series(ph.volume, tmp_path / "x", localizer=True, second_series=True)
    dss = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    series = {}
    for ds in dss:
        series.setdefault(ds.SeriesInstanceUID, []).append(ds)
    assert len(series) == 3
    assert len({ds.StudyInstanceUID for ds in dss}) == 1
    assert len({ds.FrameOfReferenceUID for ds in dss}) == 1
    scouts = [ds for ds in dss if "LOCALIZER" in ds.ImageType]
    assert len(scouts) == 1
    thick = [s for s in series.values() if "DERIVED" in s[0].ImageType][0]
    assert len(thick) < ph.volume.shape[0] and float(thick[0].SliceThickness) > ph.volume.spacing[0]


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(orientation="coronal", flip_rows=True, slice_order="shuffled"),
        dict(orientation="sagittal", flip_columns=True, slice_order="descending", transfer_syntax="rle"),
        dict(transfer_syntax="jpeg2000", localizer=True, second_series=True),
        dict(transfer_syntax="jpegls", flip_rows=True, flip_columns=True),
    ],
)
def test_round_trip_through_reader(ph, tmp_path, kw):
    write_dicom_series(ph.volume, tmp_path / "rt", **kw)
    vol = io.read_ct(tmp_path / "rt")
    assert vol.shape == ph.volume.shape
    assert np.array_equal(vol.hu, np.clip(np.rint(ph.volume.hu), -1024, 3071))
    assert np.allclose(vol.spacing, ph.volume.spacing, atol=1e-4)
    assert np.allclose(vol.origin, ph.volume.origin, atol=1e-3)
    assert np.allclose(vol.direction, ph.volume.direction)
    assert vol.series_uid == ph.volume.metadata["SeriesInstanceUID"]


def test_nifti_has_ras_affine(ph, tmp_path):
    p = write_nifti(ph.volume, tmp_path / "ct.nii.gz")
    img = nib.load(p)
    assert np.allclose(img.affine, np.diag([-1.0, -1.0, 1.0, 1.0]) @ ph.volume.affine, atol=1e-3)
    data = np.asarray(img.dataobj)
    assert data.dtype == np.int16
    # nibabel index (i, j, k) == canonical (k, j, i) transposed
    assert np.array_equal(data.transpose(2, 1, 0), np.rint(ph.volume.hu).astype(np.int16))
    m = ph.tissue == 7
    pm = write_nifti(m, tmp_path / "lung.nii.gz", like=ph.volume)
    mi = nib.load(pm)
    assert np.asarray(mi.dataobj).dtype == np.uint8
    assert np.array_equal(np.asarray(mi.dataobj).transpose(2, 1, 0).astype(bool), m)


def test_nifti_round_trip_through_reader(ph, tmp_path):
    p = write_nifti(ph.volume, tmp_path / "ct.nii.gz")
    vol = io.read_ct(p)
    assert np.array_equal(vol.hu, np.rint(ph.volume.hu))
    assert np.allclose(vol.origin, ph.volume.origin, atol=1e-3)


def test_writer_argument_errors(ph, tmp_path):
    with pytest.raises(ValueError, match="orientation"):
        write_dicom_series(ph.volume, tmp_path, orientation="oblique")
    with pytest.raises(ValueError, match="transfer_syntax"):
        write_dicom_series(ph.volume, tmp_path, transfer_syntax="jpeg-lossy")
    with pytest.raises(ValueError, match=".nii"):
        write_nifti(ph.volume, tmp_path / "ct.img")
    with pytest.raises(ValueError, match="does not match"):
        write_nifti(np.zeros((2, 2, 2), bool), tmp_path / "m.nii.gz", like=ph.volume)
