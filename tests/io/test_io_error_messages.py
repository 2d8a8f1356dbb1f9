"""Every reader error names the offending file or series, says what is wrong and what to do."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from hyperct import errors
from hyperct.io import read_ct
from tests.support.dicom import CORONAL, asymmetric_phantom, write_nifti, write_series, write_single_image

SMALL = asymmetric_phantom(shape=(18, 10, 12), spacing=(2.0, 1.0, 1.0), seed=30)


def _series(tmp_path, **kw):
    uid = generate_uid()
    files = write_series(SMALL, tmp_path, series_uid=uid, **kw)
    return uid, files


def gap(tmp_path):
    uid, files = _series(tmp_path)
    files[5].unlink()
    return tmp_path, {}, errors.SeriesGeometryError, [uid, files[4].name, files[6].name]


def duplicate(tmp_path):
    uid, files = _series(tmp_path)
    (tmp_path / "dup").write_bytes(files[2].read_bytes())
    return tmp_path, {}, errors.SeriesGeometryError, [uid, "dup", files[2].name]


def tilt(tmp_path):
    uid, _ = _series(tmp_path, shear_px=(0, 1))
    return tmp_path, {}, errors.SeriesGeometryError, [uid]


def missing_position(tmp_path):
    def drop(ds, m):
        if m == 3:
            del ds.ImagePositionPatient

    uid, files = _series(tmp_path, per_slice=drop)
    return tmp_path, {}, errors.SeriesGeometryError, [uid, files[3].name]


def mixed_size(tmp_path):
    uid, files = _series(tmp_path)
    ds = pydicom.dcmread(files[1])
    ds.Rows = ds.Columns = 4
    ds.PixelData = bytes(32)
    ds.save_as(files[1], enforce_file_format=True)
    return tmp_path, {}, errors.SeriesGeometryError, [uid, files[1].name]


def too_few(tmp_path):
    uid, files = _series(tmp_path)
    for f in files[15:]:
        f.unlink()
    return tmp_path, {}, errors.TooFewSlicesError, [uid]


def not_ct(tmp_path):
    uid, _ = _series(tmp_path, modality="PT")
    return tmp_path, {}, errors.NotCTError, [uid, str(tmp_path)]


def localizer_only(tmp_path):
    uid = generate_uid()
    write_single_image(tmp_path / "scout", series_uid=uid, orientation=CORONAL)
    return tmp_path, {}, errors.SeriesGeometryError, [uid, "scout"]


def unknown_series(tmp_path):
    _series(tmp_path)
    return tmp_path, {"series_uid": "9.9.9"}, errors.SeriesSelectionError, ["9.9.9", str(tmp_path)]


def corrupt_pixels(tmp_path):
    uid, files = _series(tmp_path)
    data = files[7].read_bytes()
    files[7].write_bytes(data[: len(data) - 40])
    return tmp_path, {}, errors.CorruptFileError, [uid, files[7].name]


def corrupt_header_value(tmp_path):
    def bad(ds, m):
        if m == 9:
            ds.RescaleSlope = "0"

    uid, files = _series(tmp_path, per_slice=bad)
    return tmp_path, {}, errors.CorruptFileError, [uid, files[9].name]


def empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    return tmp_path, {}, errors.NoImageDataError, [str(tmp_path), "notes.txt"]


def unsupported_file(tmp_path):
    (tmp_path / "scan.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a CT")
    return tmp_path / "scan.jpg", {}, errors.UnsupportedInputError, ["scan.jpg"]


def mr_file(tmp_path):
    return get_testdata_file("MR_small.dcm"), {}, errors.NotCTError, ["MR_small.dcm"]


def nifti_conflict(tmp_path):
    import numpy as np

    X, Y, Z = np.eye(3)
    path = write_nifti(SMALL, tmp_path / "vol.nii.gz", [-X, -Y, Z], qform=np.diag([2.0, 2.0, 2.0, 1.0]))
    return path, {}, errors.SeriesGeometryError, ["vol.nii.gz"]


def missing_codec(tmp_path, monkeypatch):
    from pydicom.pixels import get_decoder
    from pydicom.uid import RLELossless

    uid, files = _series(tmp_path, transfer_syntax=RLELossless)
    monkeypatch.setattr(get_decoder(RLELossless), "_available", {})
    return tmp_path, {}, errors.MissingCodecError, [uid, files[0].name, "pylibjpeg-rle"]


SCENARIOS = [
    gap,
    duplicate,
    tilt,
    missing_position,
    mixed_size,
    too_few,
    not_ct,
    localizer_only,
    unknown_series,
    corrupt_pixels,
    corrupt_header_value,
    empty_folder,
    unsupported_file,
    mr_file,
    nifti_conflict,
    missing_codec,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
def test_error_names_the_file_or_series_and_what_to_do(tmp_path, monkeypatch, scenario):
    args = (tmp_path, monkeypatch) if scenario is missing_codec else (tmp_path,)
    source, kwargs, error_type, names = scenario(*args)
    with pytest.raises(error_type) as err:
        read_ct(source, **kwargs)
    msg = str(err.value)
    assert isinstance(err.value, errors.InputError)
    missing = [n for n in names if n not in msg]
    assert not missing, f"message does not name {missing}: {msg}"
    assert err.value.hint, f"no advice on what to do: {msg}"
    assert " -> " in msg
    # the cause leads (napari's collapsed toast shows only the start), then the file, then the advice
    assert msg.startswith(err.value.cause) and msg.endswith(f" -> {err.value.hint}")
