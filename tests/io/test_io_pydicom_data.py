"""The CT (and not-CT, and broken) test files that ship with pydicom."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from hyperct.errors import CorruptFileError, InputError, NoImageDataError, NotCTError, TooFewSlicesError
from hyperct.io import list_series, read_ct
from tests.support.dicom import write_series

DATA = Path(get_testdata_file("CT_small.dcm")).parent
DICOMDIR_TESTS = DATA / "dicomdirtests"
CT5N_UID = "1.3.6.1.4.1.5962.1.1.0.0.0.1194734704.16302.0.6"  # 5 axial CT slices, 2.5 mm apart
CT2N_LOCALIZER_UID = "1.3.6.1.4.1.5962.1.1.0.0.0.1194734704.16302.0.2"


def test_dicomdirtests_small_ct_series_reads_with_explicit_min_slices():
    folder = DICOMDIR_TESTS / "98892001"  # CT2N (2 localizers) + CT5N (5 axial slices)
    vol = read_ct(folder, min_slices=5)
    assert vol.series_uid == CT5N_UID
    assert vol.shape == (5, 16, 16)
    assert vol.spacing == pytest.approx((2.5, 0.488281, 0.488281))
    # canonical k runs superior -> inferior: the slice at z = 8.7625 comes first
    assert vol.origin == pytest.approx((-72.199997, -143.0, 8.7625))
    # HU = stored + (-1024) per the header; compare against pydicom's own decode of that slice
    top = pydicom.dcmread(folder / "CT5N" / "2062")
    np.testing.assert_array_equal(vol.hu[0], top.pixel_array.astype(np.float32) * 1.0 - 1024.0)
    assert vol.metadata["PatientName"] == "Doe^Peter" and vol.metadata["Manufacturer"] == "GE MEDICAL SYSTEMS"
    skipped = {o["SeriesInstanceUID"]: o["Reason"] for o in vol.metadata["OtherSeries"]}
    assert skipped[CT2N_LOCALIZER_UID] == "localizer"
    with pytest.raises(TooFewSlicesError) as err:
        read_ct(folder)
    assert "only 5 slice(s)" in str(err.value) and CT5N_UID in str(err.value)


def test_whole_dicomdirtests_tree_via_dicomdir_picks_the_ct_series():
    vol = read_ct(DICOMDIR_TESTS / "DICOMDIR", min_slices=5)
    assert vol.series_uid == CT5N_UID
    infos = list_series(DICOMDIR_TESTS, min_slices=5)
    assert infos[0].uid == CT5N_UID and infos[0].selected
    reasons = {i.uid: i.reason for i in infos[1:]}
    assert reasons[CT2N_LOCALIZER_UID] == "localizer"
    assert any(r == "not CT (MR)" for r in reasons.values())
    assert any(r == "not CT (CR)" for r in reasons.values())
    assert all(i.status == "skipped" for i in infos[1:])
    # TINY_ALPHA holds CT Image Storage files stripped of Rows/Columns and pixel data: damaged slices, not
    # non-image objects; they are not beside the chosen series, so they are named in a warning
    assert not any("TINY_ALPHA" in p for i in infos for p in i.paths)
    unreadable = [w.message for w in vol.warnings if w.code == "unreadable_files"]
    assert len(unreadable) == 1 and "TINY_ALPHA" in unreadable[0]


def test_ct_small_alone_is_refused_as_a_single_slice():
    path = get_testdata_file("CT_small.dcm")
    with pytest.raises(TooFewSlicesError) as err:
        read_ct(path)
    msg = str(err.value)
    assert "CT_small.dcm" in msg and "1 slice" in msg and "single file" in msg


def test_mr_file_is_not_ct():
    with pytest.raises(NotCTError) as err:
        read_ct(get_testdata_file("MR_small.dcm"))
    assert "MR_small.dcm" in str(err.value) and "MR, not CT" in str(err.value)


@pytest.mark.parametrize("name", ["MR_truncated.dcm", "rtplan_truncated.dcm", "badVR.dcm"])
def test_shipped_broken_files_are_refused_with_a_typed_error(name):
    with pytest.raises(InputError) as err:
        read_ct(get_testdata_file(name), min_slices=2)
    assert name in str(err.value)


def test_truncated_pixel_data_in_a_ct_series(tmp_path):
    """MR_truncated's pixel data is short; as a CT slice among good ones it must be named."""
    ds = pydicom.dcmread(get_testdata_file("MR_truncated.dcm"))
    uid = pydicom.uid.generate_uid()
    for m in range(3):
        ds.Modality, ds.SeriesInstanceUID = "CT", uid
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.ImagePositionPatient = [0.0, 0.0, 5.0 * m]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.save_as(tmp_path / f"slice{m}", enforce_file_format=True)
    with pytest.raises(CorruptFileError) as err:
        read_ct(tmp_path, min_slices=3)
    msg = str(err.value)
    assert "slice" in msg and "pixel data" in msg and ("cannot be decoded" in msg or "too short" in msg)


def test_bytes_cut_off_a_valid_file(tmp_path, phantom):
    files = write_series(phantom, tmp_path)
    data = files[6].read_bytes()
    files[6].write_bytes(data[: len(data) // 2])  # cut inside the pixel data
    with pytest.raises(CorruptFileError) as err:
        read_ct(tmp_path)
    assert files[6].name in str(err.value)
    for cut in (140, 300):  # cut inside the header: the file can no longer be parsed
        files[6].write_bytes(data[:cut])
        with pytest.raises(CorruptFileError) as err:
            read_ct(tmp_path)
        assert files[6].name in str(err.value) and "incomplete" in str(err.value)
    files[6].write_bytes(data)
    files[0].write_bytes(data[:200])  # the lowest slice: no gap would show, the damaged file is still named
    with pytest.raises(CorruptFileError) as err:
        read_ct(tmp_path)
    assert files[0].name in str(err.value)


def test_damaged_file_in_another_folder_only_warns(tmp_path, phantom):
    files = write_series(phantom, tmp_path / "series")
    other = tmp_path / "other"
    other.mkdir()
    (other / "broken").write_bytes(files[0].read_bytes()[:300])
    vol = read_ct(tmp_path)
    (w,) = [w for w in vol.warnings if w.code == "unreadable_files"]
    assert "broken" in w.message


def test_bad_value_in_a_ct_header_is_corrupt(tmp_path):
    """badVR.dcm has NumberOfFrames '1A'; relabelled as CT it must be reported as a corrupt header."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(get_testdata_file("badVR.dcm"), src / "bad")
    raw = (src / "bad").read_bytes()
    assert b"RTDOSE" in raw
    (src / "bad").write_bytes(raw.replace(b"RTDOSE", b"CT\x20\x20\x20\x20"))
    with pytest.raises(CorruptFileError) as err:
        read_ct(src / "bad", min_slices=2)
    assert "bad" in str(err.value) and "1A" in str(err.value)


def test_rtplan_alone_has_no_image_data():
    with pytest.raises(NoImageDataError) as err:
        read_ct(get_testdata_file("rtplan.dcm"))
    assert "rtplan.dcm" in str(err.value) and "RT plan" in str(err.value)
