"""Regression tests for issue 15 (reader part): no silent loss or corruption, no hang, no memory bomb.

Each test names the class it guards. The memory tests read in a worker subprocess under a 2 GiB
address-space limit (``fuzz_worker``), so a reader that allocates what a header claims fails there.
"""

from __future__ import annotations

import gzip
import math
import os
import struct

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from hyperct import errors
from hyperct.io import geometry, list_series, read_ct
from tests.support.dicom import asymmetric_phantom, write_nifti, write_series
from tests.support.fuzz_worker import Worker

PH = asymmetric_phantom(shape=(20, 18, 17), spacing=(2.0, 0.8, 0.7), seed=15)
X, Y, Z = np.eye(3)


def _series(folder, **kw):
    return write_series(PH, folder, **kw)  # files in ascending slice order


@pytest.fixture(scope="module")
def worker():
    w = Worker(memory_bytes=2 << 30, timeout_s=60)
    yield w
    w.stop()


# --- silent loss: a damaged slice is named, wherever it sits ----------------------------------------


@pytest.mark.parametrize("where", [0, -1, 9])
@pytest.mark.parametrize("damage", ["empty", "head100", "head400", "no_pixel_data", "no_matrix"])
def test_a_damaged_slice_is_named_not_dropped_or_called_a_gap(tmp_path, where, damage):
    files = _series(tmp_path / "ct", prefix="IM", order="ascending")
    bad = files[where]
    data = bad.read_bytes()
    if damage == "empty":
        bad.write_bytes(b"")
    elif damage.startswith("head"):
        bad.write_bytes(data[: int(damage[4:])])
    else:  # cut at an element boundary: a header that parses, without the image (or its matrix size)
        ds = pydicom.dcmread(bad)
        del ds.PixelData
        if damage == "no_matrix":
            del ds.Rows
            del ds.Columns
        ds.save_as(bad, enforce_file_format=True)
    with pytest.raises(errors.CorruptFileError) as err:
        read_ct(tmp_path / "ct")
    msg = str(err.value)
    assert bad.name in msg and err.value.path == str(bad)
    assert "gap" not in msg


def test_unrelated_files_beside_a_series_are_still_ignored(tmp_path):
    files = _series(tmp_path, prefix="IM")
    (tmp_path / "README.txt").write_text("exported by the PACS")
    (tmp_path / "LOCKFILE").write_bytes(b"")
    vol = read_ct(tmp_path)
    assert vol.source_shape[0] == len(files)


def test_a_slice_moved_out_by_a_damaged_series_uid_is_named_in_the_gap_error(tmp_path):
    files = _series(tmp_path)
    ds = pydicom.dcmread(files[7])
    ds.SeriesInstanceUID = "1.2.3.999"
    ds.save_as(files[7], enforce_file_format=True)
    with pytest.raises(errors.SeriesGeometryError) as err:
        read_ct(tmp_path)
    assert files[7].name in str(err.value) and "gap" in str(err.value)


def test_a_ct_image_with_a_non_image_modality_stays_in_its_series(tmp_path):
    files = _series(tmp_path)
    ds = pydicom.dcmread(files[-1])
    ds.Modality = "SR"  # a damaged Modality does not turn a CT Image Storage file into a report
    ds.save_as(files[-1], enforce_file_format=True)
    assert read_ct(tmp_path).source_shape[0] == len(files)


# --- silent corruption: values that are not what the header says -----------------------------------


@pytest.mark.parametrize("extra", [2, 512])
def test_pixel_data_longer_than_the_header_declares_is_refused(tmp_path, extra):
    files = _series(tmp_path)
    ds = pydicom.dcmread(files[4])
    ds.PixelData = ds.PixelData + bytes(extra)
    ds.save_as(files[4], enforce_file_format=True)
    with pytest.raises(errors.CorruptFileError) as err:
        read_ct(tmp_path)
    assert files[4].name in str(err.value) and "more than" in str(err.value)


def test_a_slice_without_rescale_among_slices_with_it_is_refused(tmp_path):
    def drop(ds, m):
        if m == 19:
            del ds.RescaleSlope
            del ds.RescaleIntercept

    files = _series(tmp_path, per_slice=drop)
    with pytest.raises(errors.CorruptFileError) as err:
        read_ct(tmp_path)
    assert files[19].name in str(err.value) and "RescaleSlope" in str(err.value)


def test_a_series_without_any_rescale_still_reads(tmp_path):
    def drop(ds, m):
        del ds.RescaleSlope
        del ds.RescaleIntercept

    _series(tmp_path, per_slice=drop, intercept=0.0)
    vol = read_ct(tmp_path)
    assert vol.metadata["RescaleMissing"] is True and vol.source_shape[0] == 20


@pytest.mark.parametrize(
    ("slope", "intercept"), [("1e308", "0"), ("1e36", "0"), ("1", "-1e39"), ("1e39", "0")]
)
def test_rescale_values_that_overflow_are_refused(tmp_path, slope, intercept):
    def damage(ds, m):
        if m == 0:
            ds.RescaleSlope, ds.RescaleIntercept = slope, intercept

    files = _series(tmp_path, per_slice=damage)
    with pytest.raises(errors.CorruptFileError) as err:
        read_ct(tmp_path)
    assert files[0].name in str(err.value)


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("SliceThickness", "NaN"),
        ("SliceThickness", "inf"),
        ("PixelSpacing", ["nan", "0.8"]),
        ("PixelSpacing", ["0.8", "-inf"]),
    ],
)
def test_non_finite_thickness_or_spacing_is_refused(tmp_path, keyword, value):
    def damage(ds, m):
        if m == 5:
            setattr(ds, keyword, value)

    files = _series(tmp_path, per_slice=damage)
    with pytest.raises(errors.CorruptFileError) as err:
        read_ct(tmp_path)
    assert files[5].name in str(err.value) and keyword in str(err.value)


def test_non_finite_optional_header_values_stay_out_of_the_metadata(tmp_path):
    _series(tmp_path, tags={"KVP": "NaN"})
    vol = read_ct(tmp_path)
    assert "KVP" not in vol.metadata
    for value in vol.metadata.values():
        assert not (isinstance(value, float) and not math.isfinite(value))


def _nifti(tmp_path, name="ct.nii.gz"):
    return write_nifti(PH, tmp_path / name, [-X, -Y, Z])


@pytest.mark.parametrize("where", ["crc", "isize", "data"])
def test_nii_gz_with_a_failing_gzip_check_is_refused(tmp_path, where):
    path = _nifti(tmp_path)
    data = bytearray(path.read_bytes())
    pos = {"crc": len(data) - 8, "isize": len(data) - 2, "data": len(data) // 2}[where]
    data[pos] ^= 0x55
    path.write_bytes(bytes(data))
    with pytest.raises(errors.CorruptFileError) as err:
        read_ct(path)
    assert path.name in str(err.value)


@pytest.mark.parametrize("change", ["short", "long"])
def test_nifti_data_size_must_match_the_header(tmp_path, change):
    for name in ("ct.nii.gz", "ct.nii"):
        path = _nifti(tmp_path, name)
        raw = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
        raw = raw[:-200] if change == "short" else raw + bytes(2 * 17 * 18)  # one more slice's worth
        path.write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
        with pytest.raises(errors.CorruptFileError) as err:
            read_ct(path)
        assert name in str(err.value)


def test_nifti_scaling_that_overflows_is_refused(tmp_path):
    path = _nifti(tmp_path, "ct.nii")
    raw = bytearray(path.read_bytes())
    struct.pack_into("<ff", raw, 112, 1e36, 0.0)  # scl_slope, scl_inter (nibabel would not write these)
    path.write_bytes(bytes(raw))
    assert nib.load(str(path)).dataobj.slope == pytest.approx(1e36, rel=1e-6)
    with pytest.raises(errors.CorruptFileError) as err:
        read_ct(path)
    assert "overflow" in str(err.value) and path.name in str(err.value)


# --- hangs: only regular files are read ----------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_named_pipe_in_the_folder_is_skipped(tmp_path):
    files = _series(tmp_path / "ct")
    os.mkfifo(tmp_path / "ct" / "IM9999")
    (tmp_path / "ct" / "sub").mkdir()
    os.mkfifo(tmp_path / "ct" / "sub" / "pipe.dcm")
    assert read_ct(tmp_path / "ct").source_shape[0] == len(files)
    assert list_series(tmp_path / "ct")[0].n_slices == len(files)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["pipe.dcm", "pipe.nii.gz", "pipe.mhd", "DICOMDIR", "pipe"])
def test_a_named_pipe_as_the_input_is_refused(tmp_path, name):
    os.mkfifo(tmp_path / name)
    with pytest.raises(errors.UnsupportedInputError) as err:
        read_ct(tmp_path / name)
    assert name in str(err.value) and "named pipe" in str(err.value)


def _mhd(folder, data_file="ct.raw", size=(17, 18, 20), data=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ct.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        f"ElementSpacing = 0.7 0.8 2\nDimSize = {' '.join(map(str, size))}\nElementType = MET_SHORT\n"
        f"ElementDataFile = {data_file}\n"
    )
    if data is not None:
        (folder / data_file).write_bytes(data)
    return folder / "ct.mhd"


@pytest.mark.timeout(60)
def test_a_named_pipe_as_the_mhd_data_file_is_refused(tmp_path):
    path = _mhd(tmp_path)
    os.mkfifo(tmp_path / "ct.raw")
    with pytest.raises(errors.UnsupportedInputError) as err:
        read_ct(path)
    assert "ct.raw" in str(err.value) and "named pipe" in str(err.value)


# --- data files confined to the header's folder ---------------------------------------------------


@pytest.mark.parametrize("target", ["/dev/zero", "../outside.raw", "ABS", "link.raw"])
@pytest.mark.parametrize("fmt", ["mhd", "nhdr"])
def test_detached_data_files_must_be_beside_the_header(tmp_path, target, fmt):
    folder = tmp_path / "in"
    folder.mkdir()
    payload = np.zeros((20, 18, 17), np.int16).tobytes()
    (tmp_path / "outside.raw").write_bytes(payload)
    if target == "ABS":
        target = str(tmp_path / "outside.raw")
    if target == "link.raw":
        (folder / "link.raw").symlink_to(tmp_path / "outside.raw")
    if fmt == "mhd":
        path = _mhd(folder, data_file=target)
    else:
        path = folder / "ct.nhdr"
        path.write_text(
            "NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 17 18 20\n"
            "space directions: (0.7,0,0) (0,0.8,0) (0,0,2)\nendian: little\nencoding: raw\n"
            f"data file: {target}\n"
        )
    with pytest.raises(errors.UnsupportedInputError) as err:
        read_ct(path)
    assert "outside the header's folder" in str(err.value)


def test_a_detached_data_file_beside_the_header_reads(tmp_path):
    arr = np.rint(PH.hu).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    sitk.WriteImage(img, str(tmp_path / "ct.mhd"))
    sitk.WriteImage(img, str(tmp_path / "ct.nhdr"))
    for name in ("ct.mhd", "ct.nhdr"):
        assert sorted(read_ct(tmp_path / name).source_shape) == sorted(arr.shape)


# --- memory bombs: declared sizes against the limit and the bytes present --------------------------


def _nifti_claiming(path, shape):
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4))
    hdr = img.header.copy()
    hdr.set_data_shape(shape)
    raw = hdr.binaryblock + b"\0" * 4 + bytes(30000)
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("shape", "error"),
    [((2000, 2000, 2000), "UnsupportedInputError"), ((1000, 1000, 1000), "CorruptFileError")],
)
@pytest.mark.parametrize("name", ["bomb.nii.gz", "bomb.nii"])
def test_a_tiny_nifti_claiming_a_huge_volume_is_refused_without_allocating(
    tmp_path, worker, shape, error, name
):
    path = _nifti_claiming(tmp_path / name, shape)
    reply = worker.ask(path)
    assert reply["outcome"] == "typed" and reply["type"] == error, reply
    assert name in reply["message"] and "declares" in reply["message"]  # not a MemoryError caught late


@pytest.mark.timeout(120)
def test_tiny_dicom_files_claiming_8192_squared_are_refused_without_allocating(tmp_path, worker):
    def huge(ds, m):
        ds.Rows = ds.Columns = 8192

    files = _series(tmp_path, per_slice=huge)
    reply = worker.ask(tmp_path)
    assert reply["outcome"] == "typed" and reply["type"] == "CorruptFileError", reply
    assert any(f.name in reply["message"] for f in files) and "Rows x Columns" in reply["message"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("size", "error"),
    [((2000, 2000, 2000), "UnsupportedInputError"), ((1000, 1000, 1000), "CorruptFileError")],
)
def test_a_tiny_mhd_claiming_a_huge_volume_is_refused_without_allocating(tmp_path, worker, size, error):
    path = _mhd(tmp_path, size=size, data=bytes(30000))
    reply = worker.ask(path)
    assert reply["outcome"] == "typed" and reply["type"] == error, reply
    assert "declares" in reply["message"]  # refused from the header, not after a failed allocation


def test_the_volume_limit_is_a_named_constant():
    assert geometry.MAX_VOXELS == 2**30
    geometry.check_volume_size((1024, 1024, 1024), "x")
    with pytest.raises(errors.UnsupportedInputError):
        geometry.check_volume_size((1024, 1024, 1025), "x")


def test_a_valid_series_and_volume_files_still_read(tmp_path):
    files = _series(tmp_path / "ct", order="shuffled", padding=(-2000, None))
    assert read_ct(tmp_path / "ct").source_shape[0] == len(files)
    for name in ("ct.nii.gz", "ct.nii"):
        assert sorted(read_ct(_nifti(tmp_path, name)).source_shape) == sorted(PH.hu.shape)
