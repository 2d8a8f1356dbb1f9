"""The JSON report document: schema, codes, calls, and what each export mode keeps or removes."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import os
import stat

import pytest
from jsonschema import Draft202012Validator

from hyperct import DISCLAIMER
from hyperct.errors import ExportError
from hyperct.findings import catalogue
from hyperct.report import deid
from hyperct.report.document import build_document, schema, to_json, validate_document
from tests.support.results import POSITIVE, make_result
from tests.support.volumes import PHI, PHI_SEARCH, SERIES_UID, STUDY_UID, make_volume


def test_the_schema_is_draft_2020_12_and_the_document_validates(link_env, volume, result, saliency):
    Draft202012Validator.check_schema(schema())
    assert schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    doc = json.loads(to_json(build_document(result, volume, saliency)))
    Draft202012Validator(schema()).validate(doc)
    assert doc["disclaimer"] == DISCLAIMER
    assert len(doc["findings"]) == 25
    assert [f["id"] for f in doc["findings"]] == catalogue().ids
    assert doc["model"]["weights_sha256"] == result.model.weights_sha256
    assert doc["input"]["StudyInstanceUID"] == STUDY_UID and doc["input"]["SeriesInstanceUID"] == SERIES_UID
    assert doc["input"]["qc_warnings"][0]["code"] == "thick_slices"
    assert sorted(doc["summary"]["present"]) == sorted(POSITIVE)


def test_probabilities_calls_and_codes_follow_the_result_and_the_catalogue(link_env, volume, saliency):
    result = make_result(volume, not_assessed=("hiatal_hernia",))
    doc = build_document(result, volume, saliency)
    for f, r in zip(doc["findings"], result.findings):
        entry = catalogue()[f["id"]]
        if entry.codes:
            assert [c["scheme"] for c in f["codes"]] == ["SCT"]
            assert f["codes"][0]["value"] == entry.codes[0].value
        else:
            assert f["codes"] == [{"scheme": "99HYPERCT", "value": f["id"], "meaning": entry.name}]
        if f["id"] == "hiatal_hernia":
            assert f["call"] == "not assessed" and f["probability"] is None and f["saliency"] is None
            continue
        assert f["probability"] == pytest.approx(r.probability, abs=5e-7)
        assert f["call"] == ("present" if r.probability >= r.threshold else "absent")
        assert f["saliency"]["method"] == "gradcam"
    assert doc["summary"]["assessed"] == 24


def test_saliency_summary_gives_the_peak_in_patient_coordinates_and_its_dicom_image(
    link_env, volume, result, saliency
):
    doc = build_document(result, volume, saliency)
    f = next(x for x in doc["findings"] if x["id"] == "cardiomegaly")
    k, j, i = f["saliency"]["peak_index"]
    assert f["saliency"]["key_slice"] == k
    # LPS of voxel (k, j, i): origin + i*si (x), + j*sj (y), - k*sk (z)
    assert f["saliency"]["peak_lps_mm"] == pytest.approx([-157.5 + 5 * i, -157.5 + 5 * j, 100.0 - 5 * k])
    # image 14 of 55 -> model slices 42-44 of 165 -> source slice ~ 43.5 * 48 / 165
    assert abs(k - 43.5 * 48 / 165) <= 1.5
    sop = volume.metadata["ReferencedInstances"][k]["SOPInstanceUID"]
    assert f["saliency"]["key_instance"]["SOPInstanceUID"] == sop


def test_shareable_document_has_no_identifiers_but_keyed_link_ids(link_env, volume, result, saliency):
    doc = build_document(result, volume, saliency, mode="shareable")
    text = to_json(doc)
    for needle in PHI_SEARCH:
        assert needle not in text
    assert "QUIXOTE_ALONSO" not in text  # the file paths are left out too
    assert "source_paths" not in doc["input"]
    assert doc["export"]["mode"] == "shareable" and doc["export"]["link_key_source"] == "environment"
    expected = hmac.new(link_env, f"PatientID={PHI['PatientID']}".encode(), hashlib.sha256).hexdigest()[:32]
    assert doc["patient"]["link_ids"]["PatientID"] == expected
    assert doc["patient"]["identifiers"] == {}
    assert doc["patient"]["sex"] == "M"


def test_link_ids_depend_on_the_key(monkeypatch, tmp_path, volume, result):
    monkeypatch.setenv("HYPERCT_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("HYPERCT_LINK_KEY", "site-a")
    a = build_document(result, volume)["patient"]["link_ids"]["PatientID"]
    a2 = build_document(make_result(volume), volume)["patient"]["link_ids"]["PatientID"]
    monkeypatch.setenv("HYPERCT_LINK_KEY", "site-b")
    b = build_document(result, volume)["patient"]["link_ids"]["PatientID"]
    assert a == a2 and a != b


def test_clinical_document_keeps_the_identifiers(link_env, volume, result):
    doc = build_document(result, volume, mode="clinical")
    text = to_json(doc)
    for key, value in PHI.items():
        assert doc["patient"]["identifiers"][key] == value
        assert value in text
    assert doc["patient"]["link_ids"] == {}
    assert doc["input"]["source_paths"][0].endswith("IM0000.dcm")


def test_per_user_key_file_is_created_once_private_and_reused(monkeypatch, tmp_path, volume, result):
    monkeypatch.delenv("HYPERCT_LINK_KEY", raising=False)
    monkeypatch.delenv("HYPERCT_CONFIG_DIR", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(deid.sys, "platform", "linux")
    path = tmp_path / "xdg" / "hyperct" / "link.key"
    first = build_document(result, volume)
    assert path.is_file()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    key_text = path.read_text()
    second = build_document(make_result(volume), volume)
    assert path.read_text() == key_text
    assert first["patient"]["link_ids"] == second["patient"]["link_ids"]
    assert first["export"]["link_key_source"] == "key file"
    expected = hmac.new(key_text.strip().encode(), f"PatientID={PHI['PatientID']}".encode(), hashlib.sha256)
    assert first["patient"]["link_ids"]["PatientID"] == expected.hexdigest()[:32]


def test_schema_rejects_identifiers_in_a_shareable_document_and_bad_values(link_env, volume, result):
    doc = build_document(result, volume)
    leaky = copy.deepcopy(doc)
    leaky["patient"]["identifiers"] = {"PatientName": "QUIXOTE^ALONSO"}
    with pytest.raises(ExportError, match="patient/identifiers"):
        validate_document(leaky)
    bad = copy.deepcopy(doc)
    bad["findings"][0]["probability"] = 1.5
    with pytest.raises(ExportError, match="findings/0/probability"):
        validate_document(bad)
    short = copy.deepcopy(doc)
    short["findings"] = short["findings"][:24]
    with pytest.raises(ExportError, match="findings"):
        validate_document(short)


def test_report_id_and_created_are_injectable(link_env, volume, result):
    doc = build_document(
        result, volume, report_id="12345678-1234-4123-8123-123456789abc", created="2024-01-05T10:00:00+00:00"
    )
    assert doc["report_id"] == "12345678-1234-4123-8123-123456789abc"
    assert doc["created"] == "2024-01-05T10:00:00+00:00"
    default = build_document(result, volume)
    assert default["report_id"] == result.report_id and default["created"] == result.created


def test_unknown_mode_is_refused(link_env, volume, result):
    with pytest.raises(ExportError, match="unknown export mode 'public'"):
        build_document(result, volume, mode="public")


def test_nifti_input_without_identifiers_documents_cleanly(link_env):
    vol = make_volume(dicom=False, phi=False)
    vol.metadata = {}
    doc = build_document(make_result(vol), vol)
    assert doc["patient"]["link_ids"] == {} and doc["input"]["type"] == "nifti"
    assert all("key_instance" not in (f["saliency"] or {}) for f in doc["findings"])
