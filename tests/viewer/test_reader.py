"""The reader claims only what it can read, quickly, and says why it refuses (no napari viewer needed)."""

from __future__ import annotations

import pytest

from hyperct_viewer import reader


@pytest.fixture
def no_opening(monkeypatch):
    """Count the files the reader opens to look for DICOM."""
    opened = []
    real = reader._is_dicom_file

    def spy(path):
        opened.append(path)
        return real(path)

    monkeypatch.setattr(reader, "_is_dicom_file", spy)
    return opened


def test_reader_returns_none_for_a_folder_of_jpegs_without_opening_them(tmp_path, no_opening):
    for i in range(50):
        (tmp_path / f"photo_{i:03d}.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))
    (tmp_path / "notes.txt").write_text("holiday")
    assert reader.napari_get_reader(str(tmp_path)) is None
    assert no_opening == []


def test_reader_returns_none_for_empty_folders_and_folders_of_other_files(tmp_path, no_opening):
    empty = tmp_path / "empty"
    (empty / "sub" / "deeper").mkdir(parents=True)
    assert reader.napari_get_reader(str(empty)) is None
    other = tmp_path / "other"
    other.mkdir()
    for i in range(5):
        (other / f"file{i}").write_bytes(b"not dicom" * 30)
    assert reader.napari_get_reader(str(other)) is None
    assert len(no_opening) == 5  # files without a telling suffix are looked at (132 bytes each)


def test_reader_stops_looking_after_a_bounded_number_of_files(tmp_path, no_opening, monkeypatch):
    monkeypatch.setattr(reader, "_SCAN_LIMIT", 10)
    for i in range(30):
        (tmp_path / f"f{i:02d}").write_bytes(b"x" * 200)
    (tmp_path / "zz.dcm").write_bytes(b"")  # sorted after the limit: not reached
    assert reader.napari_get_reader(str(tmp_path)) is None
    assert len(no_opening) == 10


def test_reader_claims_a_folder_with_a_dicom_file(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8")
    (tmp_path / "IM0001").write_bytes(bytes(128) + b"DICM" + bytes(10))
    assert reader.napari_get_reader(str(tmp_path)) is reader.read_ct_layers


def test_a_refused_input_gives_one_error_that_leads_with_the_cause(tmp_path, monkeypatch):
    import napari.utils.notifications as notifications

    from tests.support.dicom import asymmetric_phantom, write_series

    ph = asymmetric_phantom(shape=(16, 24, 20), spacing=(2.0, 0.8, 0.7), seed=11)
    write_series(ph, tmp_path / "series 1", tags={"Modality": "MR"})
    shown = []
    monkeypatch.setattr(notifications, "show_error", shown.append)
    assert reader.napari_get_reader(str(tmp_path / "series 1")) is reader.read_ct_layers
    assert reader.read_ct_layers(str(tmp_path / "series 1")) == [(None,)]  # napari: no layer, no dialog
    assert len(shown) == 1 and shown[0].startswith("MR, not CT: ")
    assert str(tmp_path / "series 1") in shown[0]
