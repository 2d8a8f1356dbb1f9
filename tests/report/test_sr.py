"""DICOM SR (Comprehensive 3D SR, TID 1500): reads back with pydicom/highdicom and matches the JSON."""

from __future__ import annotations

from io import BytesIO

import highdicom as hd
import pydicom
import pytest
from pydicom.sr.codedict import codes

from hyperct.errors import ExportError
from hyperct.findings import catalogue
from hyperct.report.document import build_document
from hyperct.report.sr import build_sr, sr_bytes
from tests.support.results import make_result, make_saliency
from tests.support.volumes import PHI, PHI_SEARCH, SERIES_UID, STUDY_UID, make_volume


@pytest.fixture(scope="module")
def sr_case():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYPERCT_LINK_KEY", "sr-test-key")
        vol = make_volume()
        result = make_result(vol, not_assessed=("hiatal_hernia",))
        doc = build_document(result, vol, make_saliency(vol), mode="shareable")
    data = sr_bytes(doc, vol)
    return doc, data, vol


def _read(data: bytes) -> hd.sr.Comprehensive3DSR:
    return hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(BytesIO(data)))


def test_sr_is_a_comprehensive_3d_sr_measurement_report(sr_case):
    _, data, _ = sr_case
    ds = pydicom.dcmread(BytesIO(data))
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert ds.Modality == "SR"
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert ds.ConceptNameCodeSequence[0].CodeValue == "126000"  # Imaging Measurement Report
    assert ds.StudyInstanceUID == STUDY_UID  # filed in the source study
    assert ds.SeriesInstanceUID != SERIES_UID


def test_one_group_per_finding_with_the_json_probabilities_and_calls(sr_case):
    doc, data, _ = sr_case
    sr = _read(data)
    groups = sr.content.get_image_measurement_groups()
    assert len(groups) == 25
    by_id = {f["id"]: f for f in doc["findings"]}
    seen = []
    for g in groups:
        fid = g.tracking_identifier
        seen.append(fid)
        f = by_id[fid]
        code = f["codes"][0]
        assert g.finding_type.value == code["value"] and g.finding_type.scheme_designator == code["scheme"]
        if f["call"] == "not assessed":
            assert g.get_measurements() == [] and g.get_qualitative_evaluations() == []
            continue
        (m,) = g.get_measurements()
        assert m.name == codes.DCM.Probability
        assert m.unit.value == "{probability}" and m.unit.scheme_designator == "UCUM"
        assert m.value == f["probability"]
        (q,) = g.get_qualitative_evaluations()
        assert q.value == (codes.SCT.Present if f["call"] == "present" else codes.SCT.Absent)
    assert seen == catalogue().ids


def test_algorithm_identification_carries_name_version_and_threshold(sr_case):
    doc, data, _ = sr_case
    ds = pydicom.dcmread(BytesIO(data))
    texts = []

    def walk(items):
        for it in items:
            name = it.ConceptNameCodeSequence[0].CodeMeaning
            if it.ValueType == "TEXT":
                texts.append((name, it.TextValue))
            if "ContentSequence" in it:
                walk(it.ContentSequence)

    walk(ds.ContentSequence)
    names = {v for n, v in texts if n == "Algorithm Name"}
    versions = {v for n, v in texts if n == "Algorithm Version"}
    params = [v for n, v in texts if n == "Algorithm Parameters"]
    assert names == {"HyperCT-test"} and versions == {"9.8.7"}
    assert params.count("threshold=0.500000") == 25  # every finding's threshold is 0.5 in the fixture
    assert {p for p in params if p.startswith("finding=")} == {f"finding={i}" for i in catalogue().ids}
    assert params.count(f"weights_sha256={doc['model']['weights_sha256']}") == 25


def test_evidence_references_every_image_of_the_source_series(sr_case):
    _, data, vol = sr_case
    sr = _read(data)
    assert sr.get_evidence_series() == [(STUDY_UID, SERIES_UID)]
    evidence = sr.get_evidence()
    assert {e[2] for e in evidence} == {r["SOPInstanceUID"] for r in vol.metadata["ReferencedInstances"]}
    assert all(e[3] == "1.2.840.10008.5.1.4.1.1.2" for e in evidence)


def test_shareable_sr_has_no_identifiers_but_the_link_id(sr_case):
    doc, data, _ = sr_case
    raw = data.decode("latin-1")
    for needle in PHI_SEARCH:
        assert needle not in raw
    ds = pydicom.dcmread(BytesIO(data))
    assert ds.PatientID == doc["patient"]["link_ids"]["PatientID"]
    assert str(ds.PatientName) == "" and ds.PatientBirthDate == ""
    assert ds.PatientIdentityRemoved == "YES"


def test_clinical_sr_keeps_the_identifiers(link_env):
    vol = make_volume()
    doc = build_document(make_result(vol), vol, None, mode="clinical")
    ds = pydicom.dcmread(BytesIO(sr_bytes(doc, vol)))
    assert str(ds.PatientName) == PHI["PatientName"]
    assert ds.PatientID == PHI["PatientID"] and ds.PatientBirthDate == PHI["PatientBirthDate"]
    assert ds.AccessionNumber == PHI["AccessionNumber"]


def test_sr_for_nifti_input_is_refused(link_env):
    vol = make_volume(dicom=False)
    doc = build_document(make_result(vol), vol, None)
    with pytest.raises(ExportError, match="DICOM SR needs DICOM input.*NIfTI") as err:
        build_sr(doc, vol)
    assert "ct.nii.gz" in str(err.value)


def test_same_report_gives_the_same_sr(sr_case):
    doc, data, vol = sr_case
    assert sr_bytes(doc, vol) == data
