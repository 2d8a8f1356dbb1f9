"""Shareable exports carry no identifying text (issue 15): a study rich in identifiers, exported as
JSON, PDF, SR and saliency maps by ``hyperct predict`` and by ``hyperct.report.export``; every byte
(gzip opened), every file name, the PDF's text and every SR value are searched for each planted
string. Clinical mode keeps them."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pypdf import PdfReader

from hyperct.errors import ExportError
from hyperct.report import export
from tests.support.cli import predict_options, run_cli, site_settings
from tests.support.results import make_result, make_saliency
from tests.support.scan_files import write_dicom_series, write_nifti

NAME = ("ZYGMUNTOWICZ", "BARNABY")
PLANTED = {
    "PatientName": "ZYGMUNTOWICZ^BARNABY",
    "PatientID": "MRN4471902",
    "PatientBirthDate": "19380512",
    "OtherPatientIDs": "OTHERID8812",
    "AccessionNumber": "ACCX55291",
    "ReferringPhysicianName": "QUENTINELLA^DOCTORA",
    "StudyID": "STUDYID7731",
    "StudyDescription": "CT THORAX ZYGMUNTOWICZ BARNABY",
    "SeriesDescription": "Lung BARNABY",
    "InstitutionName": "PHILOMENAHOSPITAL",
    "StationName": "STATIONQQ7",
    "OperatorsName": "OPERATORVASQUEZ",
    "ImageComments": "COMMENTZYGMUNTOWICZ",
    "ContrastBolusAgent": "AGENT ZYGMUNTOWICZ",  # the QC warning quotes it in clinical mode
}
PRIVATE = "PRIVATEMRN4471902X"
# Strings that must not appear anywhere in a shareable file (name parts on their own too).
NEEDLES = (
    *NAME,
    "MRN4471902",
    "19380512",
    "1938-05-12",
    "OTHERID8812",
    "ACCX55291",
    "QUENTINELLA",
    "STUDYID7731",
    "PHILOMENAHOSPITAL",
    "STATIONQQ7",
    "VASQUEZ",
    "COMMENTZYGMUNTOWICZ",
    PRIVATE,
)


def _plant(folder: Path, *, description: str, n: int) -> None:
    """Add the planted identifiers (and a private tag) to every file of a written series."""
    for f in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        for k, v in PLANTED.items():
            setattr(ds, k, v)
        ds.SeriesDescription = description
        block = ds.private_block(0x0011, "ZYGMUNTOWICZ CREATOR", create=True)
        block.add_new(0x10, "LO", PRIVATE)
        ds.save_as(f, enforce_file_format=True)
        f.rename(f.with_name(f"BARNABY_{f.name}"))


@pytest.fixture(scope="module")
def phi_env(tmp_path_factory):
    from tests.support.models import save_tiny_checkpoint

    root = tmp_path_factory.mktemp("phi")
    save_tiny_checkpoint(root / "ckpt", model_version="0")
    study = root / "in" / "ZYGMUNTOWICZ_BARNABY_MRN4471902"
    uids = write_dicom_series(study / "BARNABY_thorax", shape=(24, 40, 40), seed=2)
    _plant(study / "BARNABY_thorax", description="Lung BARNABY", n=24)
    # a second series of the same study (too few slices: skipped, its description names the patient)
    second = write_dicom_series(study / "ZYGMUNTOWICZ_scout", shape=(4, 40, 40), seed=3)
    for f in (study / "ZYGMUNTOWICZ_scout").glob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID = uids["study"]
        ds.save_as(f, enforce_file_format=True)
    _plant(study / "ZYGMUNTOWICZ_scout", description="Scout ZYGMUNTOWICZ", n=4)
    assert second["series"] != uids["series"]
    # an unreadable file next to the series (its path names the patient)
    (study / "notes").mkdir()
    (study / "notes" / "ZYGMUNTOWICZ_BARNABY_MRN4471902.dcm").write_bytes(
        b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\x7f" + b"x" * 40
    )  # a DICOM preamble, then a broken element
    # a NIfTI named after a person, in a folder named with an ID
    nii_dir = root / "in" / "MRN4471902"
    nii_dir.mkdir()
    rng = np.random.default_rng(0)
    arr = rng.integers(-900, -700, size=(32, 32, 20)).astype(np.int16)
    arr[6:26, 6:26] = 40
    write_nifti(nii_dir / "ZYGMUNTOWICZ_BARNABY.nii.gz", arr, np.diag([9.0, 9.0, 8.0, 1.0]))
    with site_settings(root, "phi-test-key"):
        yield {"root": root, "study": study, "nifti": nii_dir / "ZYGMUNTOWICZ_BARNABY.nii.gz"}


def _sr_values(ds) -> list[str]:
    out = []
    for elem in ds.iterall():
        if elem.VR == "SQ":
            continue
        v = elem.value
        out += [str(x) for x in v] if isinstance(v, list | pydicom.multival.MultiValue) else [str(v)]
    return out


def _texts(path: Path) -> list[str]:
    """Everything a file says: its bytes (gunzipped), the PDF's extracted text, the SR's values."""
    raw = path.read_bytes()
    out = [path.name, raw.decode("latin-1")]
    if path.name.endswith(".gz"):
        out.append(gzip.decompress(raw).decode("latin-1"))
    if path.suffix == ".pdf":
        out.append(" ".join(p.extract_text() for p in PdfReader(path).pages))
    if path.name.endswith(".dcm"):
        out += _sr_values(pydicom.dcmread(path))
    return out


def _leaks(folder: Path, needles=NEEDLES) -> list[tuple[str, str]]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files
    hits = []
    for p in files:
        for text in _texts(p):
            up = text.upper()
            hits += [(p.name, n) for n in needles if n.upper() in up]
    return hits


def test_shareable_cli_exports_of_a_study_rich_in_identifiers_leak_nothing(phi_env):
    root = phi_env["root"]
    out = root / "share"
    common = [*predict_options(root), "--out", str(out)]
    flags = ["--json", "--pdf", "--sr", "--saliency-findings", "cardiomegaly"]
    rc, _, stderr = run_cli(["predict", str(phi_env["study"]), str(phi_env["nifti"]), *common, *flags])
    assert rc == 0, stderr
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert len(names) == 4 + 3  # DICOM: JSON, PDF, SR, map; NIfTI: JSON, PDF, map
    assert _leaks(out) == []
    docs = [json.loads(p.read_text()) for p in out.glob("*.hyperct.json")]
    dicom_doc = next(d for d in docs if d["input"]["type"] == "dicom")
    codes = [w["code"] for w in dicom_doc["input"]["qc_warnings"]]
    assert "unreadable_files" in codes and "contrast" in codes  # kept, in the project's words
    assert dicom_doc["input"]["series_selection"]["skipped"]  # the scout is listed, without its text
    assert dicom_doc["export"]["deidentification"]["profile"]["value"] == "113100"
    # short name parts and IDs: no file name token equals one
    for n in names:
        assert not {"ng", "li", "77", "mrn4471902"} & set(re.split(r"[^0-9a-z]+", n.lower()))
    sr = pydicom.dcmread(next(out.glob("*.sr.dcm")))
    assert sr.PatientIdentityRemoved == "YES" and "StudyDescription" not in sr
    assert [c.CodeValue for c in sr.DeidentificationMethodCodeSequence] == [
        "113100",
        "113110",
        "113106",
        "113108",
    ]
    assert sr.LongitudinalTemporalInformationModified == "UNMODIFIED"

    # clinical mode keeps them (name, IDs, descriptions, paths)
    clin = root / "clinical"
    rc, _, stderr = run_cli(
        ["predict", str(phi_env["study"]), *common[:-1], str(clin), *flags, "--mode", "clinical"]
    )
    assert rc == 0, stderr
    found = {n for _, n in _leaks(clin)}
    assert {"ZYGMUNTOWICZ", "BARNABY", "MRN4471902", "ACCX55291", "QUENTINELLA"} <= found
    doc = json.loads(next(clin.glob("*.hyperct.json")).read_text())
    assert doc["input"]["SeriesDescription"] == "Lung BARNABY"
    assert any("AGENT ZYGMUNTOWICZ" in w["message"] for w in doc["input"]["qc_warnings"])


def test_shareable_export_function_leaks_nothing_either(phi_env, tmp_path):
    from hyperct.io import read_ct

    vol = read_ct(phi_env["study"])
    assert vol.metadata["PatientName"]  # the identifiers were read
    result = make_result(vol)
    export(result, vol, make_saliency(vol), tmp_path, ("json", "pdf", "sr"), saliency_findings="positive")
    assert _leaks(tmp_path) == []
    nifti = read_ct(phi_env["nifti"])
    export(
        make_result(nifti),
        nifti,
        make_saliency(nifti),
        tmp_path / "n",
        ("json", "pdf"),
        saliency_findings="all",
    )
    assert _leaks(tmp_path / "n") == []


def test_short_name_parts_and_ids_never_reach_a_file_name(tmp_path, monkeypatch):
    """NG^LI with ID 77 in a folder named NG_LI_77 (the audit's example) and a neutral NIfTI name."""
    from hyperct.report import derived_stem
    from tests.support.volumes import make_volume

    monkeypatch.setenv("HYPERCT_LINK_KEY", "k")
    vol = make_volume()
    vol.metadata.update({"PatientName": "NG^LI", "PatientID": "77"})
    vol.source_paths[:] = [f"/archive/NG_LI_77/IM{n}.dcm" for n in range(3)]
    stem = derived_stem(None, vol, "shareable")
    assert stem.startswith("scan-") and not {"ng", "li", "77"} & set(re.split(r"[^0-9a-z]+", stem.lower()))
    assert derived_stem(None, vol, "clinical") == "NG_LI_77"
    with pytest.raises(ExportError, match="holds a part of the patient's name or IDs"):
        export(make_result(vol), vol, None, tmp_path, ("json",), stem="NG_LI_77")
    assert list(tmp_path.iterdir()) == []
    vol.metadata["PatientID"] = stem[5:9]  # digits of the pseudonym: a hash, not the ID, so kept
    assert export(make_result(vol), vol, None, tmp_path, ("json",), stem=stem)["json"].name.startswith(stem)
    # a NIfTI without UIDs: a keyed pseudonym (another key, another name), never the file name
    nifti = make_volume(dicom=False)
    for k in ("StudyInstanceUID", "SeriesInstanceUID"):
        nifti.metadata.pop(k)
    nifti.source_paths[:] = ["/archive/ZYGMUNTOWICZ_BARNABY.nii.gz"]
    a = derived_stem(nifti.source_paths[0], nifti, "shareable")
    monkeypatch.setenv("HYPERCT_LINK_KEY", "another site")
    b = derived_stem(nifti.source_paths[0], nifti, "shareable")
    assert a.startswith("scan-") and b.startswith("scan-") and a != b


def test_qc_texts_keep_numbers_and_drop_quoted_text():
    from hyperct.report.deid import shareable_warning

    w = shareable_warning(
        "series_skipped", "a larger CT series was skipped: series 4 'ZYGMUNTOWICZ' (1.2.3) with 40 slices (x)"
    )
    assert w == {"code": "series_skipped", "message": "a larger CT series was skipped (40 slices)"}
    w = shareable_warning("nonfinite_values", "12 NaN/infinite voxel(s) in BARNABY.nii.gz set to -1000 HU")
    assert w["message"] == "12 NaN/infinite voxel(s) set to -1000 HU"
    w = shareable_warning("thick_slices", "free text BARNABY")
    assert "BARNABY" not in w["message"] and "5 mm" in w["message"]
    assert shareable_warning("BARNABY", "x")["code"] == "qc_warning"
