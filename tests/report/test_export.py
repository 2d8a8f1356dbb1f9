"""``hyperct.report.export``: file names, formats, refusals before anything is written."""

from __future__ import annotations

import json
import os

import pytest

from hyperct.errors import ExportError
from hyperct.report import default_stem, export
from tests.support.results import POSITIVE, make_result, make_saliency
from tests.support.volumes import PHI_SEARCH, make_volume

RID = "0f8fad5b-d9cb-469f-a165-70867728950e"


def _visible(folder) -> list[str]:
    """File names without the hidden set record."""
    return sorted(n for n in os.listdir(folder) if not n.startswith("."))


CREATED = "2024-01-05T10:20:30+00:00"


def test_writes_json_pdf_sr_and_maps_with_the_documented_names(link_env, tmp_path, volume, result, saliency):
    paths = export(
        result, volume, saliency, tmp_path, ("json", "pdf", "sr"), stem="case1", saliency_findings="positive"
    )
    assert paths["json"] == tmp_path / "case1.hyperct.json"
    assert paths["pdf"] == tmp_path / "case1.hyperct.pdf"
    assert paths["sr"] == tmp_path / "case1.hyperct.sr.dcm"
    assert {k for k in paths if k.startswith("saliency:")} == {f"saliency:{f}" for f in POSITIVE}
    assert paths["saliency:cardiomegaly"] == tmp_path / "case1.saliency.cardiomegaly.nii.gz"
    assert _visible(tmp_path) == sorted(p.name for p in paths.values())
    assert sorted(os.listdir(tmp_path)) == sorted(
        _visible(tmp_path) + [".case1.hyperct.set"]
    )  # no temp, no lock
    doc = json.loads(paths["json"].read_text())
    assert doc["export"]["mode"] == "shareable"
    assert paths["pdf"].read_bytes().startswith(b"%PDF")
    assert paths["sr"].read_bytes()[128:132] == b"DICM"


def test_existing_target_refuses_the_whole_export_and_writes_nothing(link_env, tmp_path, volume, result):
    (tmp_path / "case1.hyperct.pdf").write_bytes(b"old")
    with pytest.raises(ExportError) as err:
        export(result, volume, None, tmp_path, ("json", "pdf"), stem="case1")
    assert "case1.hyperct.pdf" in str(err.value) and "--overwrite" in str(err.value)
    assert os.listdir(tmp_path) == ["case1.hyperct.pdf"]
    assert (tmp_path / "case1.hyperct.pdf").read_bytes() == b"old"
    paths = export(result, volume, None, tmp_path, ("json", "pdf"), stem="case1", overwrite=True)
    assert paths["pdf"].read_bytes().startswith(b"%PDF")


def test_sr_for_nifti_is_refused_before_anything_is_written(link_env, tmp_path):
    vol = make_volume(dicom=False)
    with pytest.raises(ExportError, match="DICOM SR needs DICOM input"):
        export(make_result(vol), vol, None, tmp_path, ("json", "pdf", "sr"))
    assert os.listdir(tmp_path) == []


def test_maps_need_saliency_for_the_requested_findings(link_env, tmp_path, volume, result):
    with pytest.raises(ExportError, match="none were computed"):
        export(result, volume, None, tmp_path, ("json",), saliency_findings=["cardiomegaly"])
    partial = make_saliency(volume, ids=["emphysema"])
    with pytest.raises(ExportError, match="no saliency map was computed for cardiomegaly"):
        export(result, volume, partial, tmp_path, ("json",), saliency_findings=["cardiomegaly"])
    with pytest.raises(ExportError, match="unknown finding id 'heart'"):
        export(result, volume, partial, tmp_path, ("json",), saliency_findings=["heart"])
    assert os.listdir(tmp_path) == []


def test_report_id_and_created_make_exports_byte_identical(link_env, tmp_path, volume, result, saliency):
    a = export(result, volume, saliency, tmp_path / "a", stem="s", report_id=RID, created=CREATED)
    again = make_result(volume)  # a second analysis of the same scan: new id and time of its own
    b = export(again, volume, saliency, tmp_path / "b", stem="s", report_id=RID, created=CREATED)
    for fmt in ("json", "pdf", "sr"):
        assert a[fmt].read_bytes() == b[fmt].read_bytes(), fmt
    c = export(again, volume, saliency, tmp_path / "c", ("json",), stem="s")
    assert c["json"].read_bytes() != a["json"].read_bytes()


def test_unknown_format_is_refused(link_env, tmp_path, volume, result):
    with pytest.raises(ExportError, match="unknown export format"):
        export(result, volume, None, tmp_path, ("docx",))


@pytest.mark.parametrize(
    "source,stem",
    [
        ("/data/scans/case_07.nii.gz", "case_07"),
        ("/data/scans/case_07.nrrd", "case_07"),
        ("/data/scans/patient 3/", "patient 3"),
        ("/data/CT/DICOMDIR", "CT"),
        (["/d/ser/IM1.dcm", "/d/ser/IM2.dcm"], "ser"),
    ],
)
def test_default_stem_is_the_input_name(source, stem, tmp_path):
    if isinstance(source, str) and source.endswith("/"):
        source = tmp_path / "patient 3"
        source.mkdir()
    assert default_stem(source) == stem
    vol = make_volume()
    assert default_stem(vol) == "ct"  # the DICOM files' folder


def _at(path: str, dicom: bool = False):
    vol = make_volume(dicom=dicom)
    vol.source_paths[:] = [path]
    return vol


@pytest.mark.parametrize(
    "path",
    [
        "/archive/QUIXOTE_ALONSO.nii.gz",  # the patient's name
        "/archive/alonso-chest.nii.gz",  # one part of it, another case
        "/archive/PID775533.nii.gz",  # the patient ID without its punctuation
        "/archive/ct_19470321.nii.gz",  # the birth date
        "/archive/ACC-99120.nii.gz",  # the accession number
    ],
)
def test_shareable_default_stem_never_carries_patient_identifiers(link_env, tmp_path, result, path):
    from hyperct.report import derived_stem

    vol = _at(path)
    stem = derived_stem(path, vol, "shareable")
    assert stem.startswith("scan-") and len(stem) == len("scan-") + 12
    assert stem == derived_stem(path, vol, "shareable")  # stable for the series
    assert derived_stem(path, vol, "clinical") == default_stem(path)  # clinical files keep the name
    paths = export(make_result(vol), vol, None, tmp_path, ("json", "pdf"))  # no stem given
    names = " ".join(p.name for p in paths.values()).upper()
    assert paths["json"].name == f"{stem}.hyperct.json"
    assert not any(token.upper() in names for token in PHI_SEARCH + ("PID775533",))


def test_shareable_always_pseudonymises_and_an_explicit_neutral_stem_is_kept(link_env, tmp_path):
    from hyperct.report import derived_stem

    vol = _at("/archive/case_07.nii.gz")  # "case_07" may be an MRN: no check can prove a name safe
    assert derived_stem("/archive/case_07.nii.gz", vol, "shareable").startswith("scan-")
    assert derived_stem("/archive/case_07.nii.gz", vol, "clinical") == "case_07"
    named = _at("/archive/QUIXOTE_ALONSO.nii.gz")
    paths = export(make_result(named), named, None, tmp_path, ("json",), stem="my-choice")
    assert paths["json"].name == "my-choice.hyperct.json"  # the user's own stem is theirs to choose
