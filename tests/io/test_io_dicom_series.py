"""Reading synthetic DICOM series: ordering, orientation, selection, values, codecs, metadata."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

from hyperct.errors import MissingCodecError, SeriesSelectionError
from hyperct.io import SELECTION_RULE, list_series, read_ct
from tests.support.dicom import (
    AXIAL,
    CORONAL,
    SAGITTAL,
    assert_matches_phantom,
    asymmetric_phantom,
    sample_grid,
    write_enhanced,
    write_series,
    write_single_image,
)

ORIENTATIONS = {
    "axial": AXIAL,
    "axial_flipped": ((-1, 0, 0), (0, -1, 0)),  # row R<-L, column P->A (prone-like)
    "coronal": CORONAL,
    "sagittal": SAGITTAL,
    "sagittal_flipped": ((0, -1, 0), (0, 0, 1)),
    "odd_permutation": ((0, 0, 1), (1, 0, 0)),  # rows along z, columns along x, slices along y
}


@pytest.mark.parametrize("order", ["ascending", "descending", "shuffled"])
@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_same_anatomy_reads_back_identically_whatever_the_acquisition(tmp_path, phantom, orientation, order):
    write_series(phantom, tmp_path, orientation=ORIENTATIONS[orientation], order=order, seed=7)
    vol = read_ct(tmp_path)
    assert_matches_phantom(vol, phantom)
    assert vol.source_format == "dicom"
    assert not [w for w in vol.warnings if w.code == "oblique_snapped"]


@pytest.mark.parametrize("orientation", ["axial", "coronal", "odd_permutation"])
def test_source_grid_and_source_affine_map_back_to_the_files(tmp_path, phantom, orientation):
    ori = ORIENTATIONS[orientation]
    files = write_series(phantom, tmp_path, orientation=ori, order="shuffled")
    vol = read_ct(tmp_path)
    r, c = np.asarray(ori[0], float), np.asarray(ori[1], float)
    expected_source, _, _ = sample_grid(phantom, [np.cross(r, c), c, r])  # (slices ascending, rows, cols)
    source = vol.to_source_grid(vol.hu)
    assert source.shape == vol.source_shape == expected_source.shape
    np.testing.assert_array_equal(source, expected_source)
    # pixel (row 2, col 3) of the first file, through source_affine, lands on the same voxel value
    ds = pydicom.dcmread(files[0])
    lps = np.asarray(ds.ImagePositionPatient, float) + 3 * ds.PixelSpacing[1] * r + 2 * ds.PixelSpacing[0] * c
    ijk = np.linalg.solve(vol.source_affine[:3, :3], lps - vol.source_affine[:3, 3])
    i, j, k = np.rint(ijk).astype(int)
    assert (i, j) == (3, 2) and np.allclose(ijk, (i, j, k), atol=1e-6)
    stored = ds.pixel_array[2, 3] * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert source[k, j, i] == stored
    assert vol.hu[tuple(np.rint(vol.lps_to_index(lps)).astype(int))] == stored


def test_nested_folders_files_without_extension_and_junk_files(tmp_path, phantom):
    files = write_series(phantom, tmp_path / "staging", order="shuffled")
    for n, f in enumerate(files):
        target = tmp_path / "cd" / f"D{n % 3}" / "sub" / f"{n:08X}"  # no extension, split over folders
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(f, target)
    (tmp_path / "cd" / "README.TXT").write_text("Viewer on this CD\n")
    (tmp_path / "cd" / "D1" / "AUTORUN.INF").write_bytes(b"\x00\x01garbage")
    vol = read_ct(tmp_path / "cd")
    assert_matches_phantom(vol, phantom)
    assert not vol.warnings or all(w.code != "unreadable_files" for w in vol.warnings)


def test_dicomdir_cd_layout(tmp_path, phantom):
    from pydicom.fileset import FileSet

    files = write_series(phantom, tmp_path / "src", orientation=CORONAL)
    fs = FileSet()
    for f in files:
        fs.add(pydicom.dcmread(f))
    fs.write(tmp_path / "cd")
    assert (tmp_path / "cd" / "DICOMDIR").is_file()
    assert_matches_phantom(read_ct(tmp_path / "cd" / "DICOMDIR"), phantom)
    assert_matches_phantom(read_ct(tmp_path / "cd"), phantom)
    # the DICOMDIR itself is not listed as a series
    assert [s.n_slices for s in list_series(tmp_path / "cd")] == [phantom.hu.shape[1]]


def test_multi_file_selection(tmp_path, phantom):
    files = write_series(phantom, tmp_path, order="shuffled")
    vol = read_ct([str(f) for f in reversed(files)])
    assert_matches_phantom(vol, phantom)
    assert sorted(vol.source_paths) == sorted(str(f) for f in files)


def _two_series(tmp_path):
    thin = asymmetric_phantom(shape=(24, 16, 18), spacing=(1.0, 0.8, 0.7), seed=1)
    thick = asymmetric_phantom(shape=(18, 16, 18), spacing=(2.5, 0.8, 0.7), seed=2)
    thin_uid, thick_uid = generate_uid(), generate_uid()
    write_series(
        thin, tmp_path, series_uid=thin_uid, prefix="A", tags={"SeriesNumber": 4, "SeriesDescription": "thin"}
    )
    write_series(
        thick,
        tmp_path,
        series_uid=thick_uid,
        prefix="B",
        tags={"SeriesNumber": 2, "SeriesDescription": "thick"},
    )
    return thin, thick, thin_uid, thick_uid


def test_two_series_in_one_folder_pick_most_slices_and_report_the_other(tmp_path):
    thin, thick, thin_uid, thick_uid = _two_series(tmp_path)
    vol = read_ct(tmp_path)
    assert vol.series_uid == thin_uid
    np.testing.assert_array_equal(vol.hu, thin.hu)
    assert vol.metadata["SelectionRule"] == SELECTION_RULE
    others = vol.metadata["OtherSeries"]
    assert [o["SeriesInstanceUID"] for o in others] == [thick_uid]
    assert others[0]["Slices"] == 18 and others[0]["Status"] == "usable"

    infos = list_series(tmp_path)
    assert [(i.uid, i.status, i.selected) for i in infos] == [
        (thin_uid, "selected", True),
        (thick_uid, "usable", False),
    ]
    assert (
        infos[0].n_slices == 24
        and infos[0].matrix == (16, 18)
        and infos[0].slice_thickness == pytest.approx(1.0)
    )
    assert infos[1].slice_thickness == pytest.approx(2.5) and infos[1].description == "thick"

    # explicit choice
    vol2 = read_ct(tmp_path, series_uid=thick_uid)
    np.testing.assert_array_equal(vol2.hu, thick.hu)
    assert vol2.metadata["SelectionRule"] == "requested by SeriesInstanceUID"
    with pytest.raises(SeriesSelectionError) as err:
        read_ct(tmp_path, series_uid="1.2.3.4.5")
    assert "1.2.3.4.5" in str(err.value) and thin_uid in str(err.value) and str(tmp_path) in str(err.value)


def test_equal_slice_counts_go_to_the_thinner_series(tmp_path):
    a = asymmetric_phantom(shape=(18, 12, 12), spacing=(3.0, 1.0, 1.0), seed=3)
    b = asymmetric_phantom(shape=(18, 12, 12), spacing=(1.5, 1.0, 1.0), seed=4)
    uid_a, uid_b = generate_uid(), generate_uid()
    write_series(a, tmp_path, series_uid=uid_a, prefix="A", tags={"SeriesNumber": 1})
    write_series(b, tmp_path, series_uid=uid_b, prefix="B", tags={"SeriesNumber": 9})
    assert read_ct(tmp_path).series_uid == uid_b


def test_localizers_among_the_slices_are_ignored(tmp_path, phantom):
    uid = generate_uid()
    write_series(phantom, tmp_path, series_uid=uid, order="shuffled")
    write_single_image(tmp_path / "scout_tagged", series_uid=uid, orientation=CORONAL)
    write_single_image(  # no LOCALIZER in ImageType, but a single slice orthogonal to the stack
        tmp_path / "scout_untagged",
        series_uid=uid,
        orientation=SAGITTAL,
        image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
    )
    vol = read_ct(tmp_path)
    assert_matches_phantom(vol, phantom)
    assert all("scout" not in p for p in vol.source_paths)
    (info,) = list_series(tmp_path)
    assert info.n_slices == phantom.hu.shape[0] and "2 localizer" in info.reason


def test_localizer_series_and_non_image_objects_are_skipped(tmp_path, phantom):
    write_series(phantom, tmp_path)
    loc_uid = generate_uid()
    write_single_image(tmp_path / "loc1", series_uid=loc_uid, orientation=CORONAL)
    write_single_image(tmp_path / "loc2", series_uid=loc_uid, orientation=SAGITTAL)
    sr = Dataset()
    sr.file_meta = FileMetaDataset()
    sr.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    sr.SOPInstanceUID = generate_uid()
    sr.file_meta.MediaStorageSOPClassUID = sr.SOPClassUID
    sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID
    sr.Modality, sr.SeriesInstanceUID = "SR", generate_uid()
    sr.save_as(tmp_path / "report", enforce_file_format=True)
    vol = read_ct(tmp_path)
    assert_matches_phantom(vol, phantom)
    reasons = {i.uid: i.reason for i in list_series(tmp_path) if not i.selected}
    assert reasons[loc_uid] == "localizer"
    assert reasons[sr.SeriesInstanceUID].startswith("non-image (structured report")
    skipped = {o["SeriesInstanceUID"]: o["Reason"] for o in vol.metadata["OtherSeries"]}
    assert set(skipped) == {loc_uid, sr.SeriesInstanceUID}


def test_per_slice_rescale_slope_and_intercept(tmp_path, phantom):
    write_series(
        phantom,
        tmp_path,
        slope=lambda m: 0.5 if m % 2 else 1.0,
        intercept=lambda m: -1024.0 + 8 * (m % 3),
        order="shuffled",
    )
    slopes = {float(pydicom.dcmread(f).RescaleSlope) for f in tmp_path.iterdir()}
    assert slopes == {0.5, 1.0}
    assert_matches_phantom(read_ct(tmp_path), phantom)


@pytest.mark.parametrize("padding", [(-2000, None), (-3000, -2000)])
def test_pixel_padding_is_air_not_tissue(tmp_path, phantom, padding):
    mask = np.zeros(phantom.hu.shape, bool)
    mask[:, :4, :] = True  # a band outside the reconstruction circle
    mask[:, :, -3:] = True
    write_series(phantom, tmp_path, padding=padding, pad_mask=mask, intercept=-1024.0)
    vol = read_ct(tmp_path)
    assert np.all(vol.hu[mask] == -1000.0)
    np.testing.assert_array_equal(vol.hu[~mask], phantom.hu[~mask])
    # what it would have been without the padding rule: a value far below air
    assert padding[0] - 1024 < -2900


def test_rescale_override_applies_to_stored_values(tmp_path, phantom):
    write_series(phantom, tmp_path, slope=1.0, intercept=-1024.0)
    vol = read_ct(tmp_path, rescale=(2.0, 0.0))
    np.testing.assert_array_equal(vol.hu, 2.0 * (phantom.hu + 1024.0))
    assert vol.metadata["RescaleOverride"] == [2.0, 0.0]


def _encoder_available(ts) -> bool:
    from pydicom.pixels import get_encoder

    try:
        return get_encoder(ts).is_available
    except Exception:  # noqa: BLE001
        return False


@pytest.mark.parametrize(
    "ts",
    [
        RLELossless,
        JPEG2000Lossless,
        pytest.param(
            JPEGLSLossless,
            marks=pytest.mark.skipif(not _encoder_available(JPEGLSLossless), reason="no JPEG-LS encoder"),
        ),
    ],
    ids=["rle", "jpeg2000", "jpegls"],
)
def test_compressed_transfer_syntaxes_decode(tmp_path, ts):
    ph = asymmetric_phantom(shape=(16, 32, 32), seed=5)  # JPEG 2000 needs tiles of >= 32 pixels
    files = write_series(ph, tmp_path, transfer_syntax=ts, order="shuffled")
    assert pydicom.dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID == ts
    vol = read_ct(tmp_path)
    assert_matches_phantom(vol, ph)
    assert vol.metadata["TransferSyntaxUID"] == ts


def test_jpeg_extended_pixel_data_decodes(tmp_path):
    """JPEG (process 2/4) cannot be encoded here: reuse pydicom's JPGExtended frame in every slice."""
    from pydicom.data import get_testdata_file

    src = pydicom.dcmread(get_testdata_file("JPGExtended.dcm"))
    expected = src.pixel_array.astype(np.float32)
    rows, cols = expected.shape
    uid = generate_uid()
    for m in range(16):
        ds = src.copy()
        ds.Modality, ds.SeriesInstanceUID, ds.SOPInstanceUID = "CT", uid, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
        ds.ImagePositionPatient = [0.0, 0.0, -2.0 * m]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [1.0, 1.0]
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.save_as(tmp_path / f"j{m}", enforce_file_format=True)
    vol = read_ct(tmp_path)
    assert vol.shape == (16, rows, cols)
    np.testing.assert_array_equal(vol.hu[5], expected - 1024)


def test_missing_codec_names_the_package(tmp_path, monkeypatch):
    from pydicom.pixels import get_decoder

    ph = asymmetric_phantom(shape=(16, 32, 32), seed=6)
    write_series(ph, tmp_path, transfer_syntax=JPEG2000Lossless)
    decoder = get_decoder(JPEG2000Lossless)
    monkeypatch.setattr(decoder, "_available", {})
    with pytest.raises(MissingCodecError) as err:
        read_ct(tmp_path)
    msg = str(err.value)
    assert "pylibjpeg-openjpeg" in msg and "JPEG 2000" in msg and str(tmp_path) in msg


def test_enhanced_multiframe_ct(tmp_path, phantom):
    write_enhanced(phantom, tmp_path / "enhanced.dcm", orientation=SAGITTAL)
    vol = read_ct(tmp_path / "enhanced.dcm")
    assert_matches_phantom(vol, phantom)
    assert len(vol.metadata["ReferencedInstances"]) == 1


def test_metadata_from_the_header(tmp_path, phantom):
    files = write_series(
        phantom,
        tmp_path,
        order="shuffled",
        tags={"ConvolutionKernel": "B70f", "BodyPartExamined": "CHEST", "ReferringPhysicianName": "Doe^Jane"},
    )
    vol = read_ct(tmp_path)
    m = vol.metadata
    assert m["PatientName"] == "Test^Phantom" and isinstance(m["PatientName"], str)
    assert (
        m["PatientID"] == "PH-001" and m["PatientBirthDate"] == "19700101" and m["AccessionNumber"] == "ACC1"
    )
    assert m["SeriesNumber"] == 3 and m["KVP"] == 120.0 and m["SliceThickness"] == pytest.approx(2.0)
    assert m["ConvolutionKernel"] == "B70f" and m["BodyPartExamined"] == "CHEST"
    assert m["ReferringPhysicianName"] == "Doe^Jane" and m["Modality"] == "CT"
    assert m["TransferSyntaxUID"] == pydicom.uid.ExplicitVRLittleEndian
    assert "ContrastBolusAgent" not in m and "PatientAge" not in m  # absent tags stay absent
    # referenced instances in canonical order: superior (highest z) first
    by_z = sorted(
        (float(pydicom.dcmread(f).ImagePositionPatient[2]), pydicom.dcmread(f).SOPInstanceUID) for f in files
    )
    refs = m["ReferencedInstances"]
    assert [r["SOPInstanceUID"] for r in refs] == [uid for _, uid in reversed(by_z)]
    assert {r["SOPClassUID"] for r in refs} == {pydicom.uid.CTImageStorage}
    assert vol.study_uid == m["StudyInstanceUID"] and vol.series_uid == m["SeriesInstanceUID"]


@pytest.mark.parametrize(
    "signed,bits_stored,ts",
    [
        (1, 16, pydicom.uid.ExplicitVRLittleEndian),
        (1, 12, pydicom.uid.ExplicitVRLittleEndian),
        (0, 12, pydicom.uid.ImplicitVRLittleEndian),
        (0, 16, pydicom.uid.ImplicitVRLittleEndian),
    ],
)
def test_direct_read_of_uncompressed_pixels_matches_pydicom(tmp_path, monkeypatch, signed, bits_stored, ts):
    """The reader reads native pixel data at the offset found by the header scan; it must give exactly
    what pydicom's decoder gives (masking/sign extension of the unused high bits included)."""
    ph = asymmetric_phantom(shape=(16, 6, 7), seed=8)
    files = write_series(ph, tmp_path, signed=bool(signed), intercept=-1024.0)
    rng = np.random.default_rng(0)
    expected = []
    for f in files:  # ascending z
        ds = pydicom.dcmread(f)
        raw = rng.integers(0, 2**16, size=(6, 7), dtype=np.uint16)  # garbage in the unused high bits too
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, signed
        ds.PixelData = raw.tobytes()
        ds.file_meta.TransferSyntaxUID = ts
        ds.save_as(f, enforce_file_format=True)
        expected.append(pydicom.dcmread(f).pixel_array.astype(np.float32))
    import hyperct.io.dicom_volume as dv

    def no_pydicom(*a, **k):
        raise AssertionError("pydicom decoder used for native pixel data")

    monkeypatch.setattr(dv, "pixel_array", no_pydicom)
    vol = read_ct(tmp_path, rescale=(1.0, 0.0))
    np.testing.assert_array_equal(vol.hu[::-1], np.stack(expected))  # canonical k runs downwards


def test_list_series_reads_headers_only(tmp_path, monkeypatch, phantom):
    write_series(phantom, tmp_path, orientation=SAGITTAL)
    import hyperct.io.dicom_volume as dv

    def boom(*a, **k):
        raise AssertionError("pixel data decoded by list_series")

    monkeypatch.setattr(dv, "pixel_array", boom)
    monkeypatch.setattr(dv, "_read_native", boom)
    (info,) = list_series(tmp_path)
    assert info.selected and info.orientation == "sagittal" and info.n_slices == phantom.hu.shape[2]
    assert info.matrix == (phantom.hu.shape[0], phantom.hu.shape[1])  # rows run S->I, columns A->P
    assert info.slice_spacing == pytest.approx(0.7)


def test_a_damaged_jpeg2000_slice_is_named_as_damaged_not_as_a_missing_codec(tmp_path):
    """The decoder is installed, the data is cut short: the advice must not be 'pip install ...'."""
    from hyperct.errors import CorruptFileError

    ph = asymmetric_phantom(shape=(16, 32, 32), seed=7)
    files = write_series(ph, tmp_path, transfer_syntax=JPEG2000Lossless, order="ascending")
    victim = sorted(files)[7]
    ds = pydicom.dcmread(victim)
    frame = pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1)
    data = next(iter(frame))
    ds.PixelData = pydicom.encaps.encapsulate([data[: len(data) // 3]])
    ds.save_as(victim, enforce_file_format=True)
    with pytest.raises(CorruptFileError) as err:
        read_ct(tmp_path)
    assert not isinstance(err.value, MissingCodecError)
    assert "pip install" not in str(err.value) and Path(victim).name in str(err.value)
