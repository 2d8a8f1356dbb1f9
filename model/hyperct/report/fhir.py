"""FHIR R4 output: a report document as a Bundle of a DiagnosticReport, its Observations and the model.

Built with the ``fhir.resources`` R4B models (``fhir.resources.R4B``: R4-compatible resources,
validated by pydantic on construction), never as hand-written JSON:

* ``Bundle`` (type ``collection``) holding, as ``urn:uuid:`` entries:
* ``Device``: the model (name, version, weights sha256 as an identifier, demo flag in a note);
* ``Patient`` (clinical mode only): the patient's ID and name as in the input;
* one ``Observation`` per assessed finding (call present/absent): ``code`` = the finding's checked
  SNOMED CT codes (as in the DICOM SR, ``hyperct.report.coding``), else the catalogue's local code;
  ``valueQuantity`` = the probability (UCUM unit ``1``); ``interpretation`` = POS/NEG
  (v3 ObservationInterpretation) for the call; the threshold as ``referenceRange.high``;
  ``device`` = the model; notes: the disclaimer and every QC warning; status ``preliminary``
  (AI output, not verified by a reader);
* ``DiagnosticReport``: status ``preliminary``, category RAD, the study as ``imagingStudy``
  (its StudyInstanceUID as an identifier), ``result`` = the Observations, ``conclusion`` = the
  disclaimer, the findings called present and the QC warnings (DiagnosticReport has no ``note`` in R4).

Identifiers follow the document's export mode: shareable documents carry no name, patient ID or
accession number (the subject is referenced by its link ID only, a keyed hash); clinical ones the
values of the input. Resource ids are UUIDs derived from the report id, so the same report gives the
same bundle.
"""

from __future__ import annotations

import uuid
from typing import Any

SNOMED_SYSTEM = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
INTERPRETATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
DIAGNOSTIC_SERVICE = "http://terminology.hl7.org/CodeSystem/v2-0074"
IDENTIFIER_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0203"
LOCAL_SYSTEM = "urn:hyperct-viewer:findings"
LINK_ID_SYSTEM = "urn:hyperct-viewer:link-id:"  # + DICOM keyword
SHA256_SYSTEM = "urn:hyperct-viewer:model-weights-sha256"
DICOM_UID_SYSTEM = "urn:dicom:uid"
REPORT_CODE = {
    "system": "urn:hyperct-viewer:report",
    "code": "hyperct-chest-ct-25",
    "display": "HyperCT chest CT AI findings (25)",
}
CALL_CODES = {"present": ("POS", "Positive"), "absent": ("NEG", "Negative")}


def _system(scheme: str) -> str:
    return SNOMED_SYSTEM if scheme == "SCT" else LOCAL_SYSTEM


def _uuid(report_id: str, name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:hyperct-viewer:{report_id}:{name}"))


def _date(da: Any) -> str | None:
    s = str(da or "").strip()
    if len(s) == 8 and s.isdigit():
        return f"{s[:4]}-{s[4:6]}-{s[6:]}"
    return None


def build_bundle(doc: dict[str, Any]):
    """The ``fhir.resources.R4B.bundle.Bundle`` of a report document (``report.document.build_document``)."""
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.device import Device
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport
    from fhir.resources.R4B.observation import Observation
    from fhir.resources.R4B.patient import Patient

    rid = doc["report_id"]
    mode = doc["export"]["mode"]
    model = doc["model"]
    qc = doc["input"].get("qc_warnings") or []
    disclaimer = doc["disclaimer"]
    created = doc["created"]
    entries: list[tuple[str, Any]] = []

    dev_id = _uuid(rid, "device")
    device = Device(
        id=dev_id,
        status="active",
        deviceName=[{"name": f"{model['name']}", "type": "model-name"}],
        version=[{"value": str(model["version"])}],
        identifier=[{"system": SHA256_SYSTEM, "value": model["weights_sha256"]}],
        note=[
            {"text": f"{doc['software']['name']} {doc['software']['version']}; backbone {model['backbone']}"},
            *(
                [{"text": "Demo model trained on synthetic phantoms: no clinical validity."}]
                if model["demo"]
                else []
            ),
        ],
    )
    entries.append((dev_id, device))

    subject = None
    patient = doc.get("patient") or {}
    if mode == "clinical" and patient.get("identifiers"):
        ids = patient["identifiers"]
        pat_id = _uuid(rid, "patient")
        fields: dict[str, Any] = {"id": pat_id}
        if ids.get("PatientID"):
            fields["identifier"] = [
                {"value": ids["PatientID"], "type": {"coding": [{"system": IDENTIFIER_TYPE, "code": "MR"}]}}
            ]
        if ids.get("PatientName"):
            parts = str(ids["PatientName"]).split("^")
            name: dict[str, Any] = {"text": str(ids["PatientName"]).replace("^", " ").strip()}
            if parts[0]:
                name["family"] = parts[0]
            if len(parts) > 1 and parts[1]:
                name["given"] = [p for p in parts[1:3] if p]
            fields["name"] = [name]
        if ids.get("PatientBirthDate") and _date(ids["PatientBirthDate"]):
            fields["birthDate"] = _date(ids["PatientBirthDate"])
        entries.append((pat_id, Patient(**fields)))
        subject = {"reference": f"urn:uuid:{pat_id}"}
    elif mode != "clinical" and patient.get("link_ids", {}).get("PatientID"):
        subject = {
            "identifier": {"system": LINK_ID_SYSTEM + "PatientID", "value": patient["link_ids"]["PatientID"]},
            "display": "pseudonymous patient (link ID)",
        }

    notes = [{"text": disclaimer}] + [{"text": f"QC warning {w['code']}: {w['message']}"} for w in qc]
    effective = _date(doc["input"].get("StudyDate"))
    obs_refs = []
    for f in doc["findings"]:
        if f["call"] not in CALL_CODES or f["probability"] is None:
            continue  # not assessed / no valid score: no Observation
        code, display = CALL_CODES[f["call"]]
        oid = _uuid(rid, f"finding:{f['id']}")
        fields = {
            "id": oid,
            "status": "preliminary",
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "imaging",
                        }
                    ]
                }
            ],
            "code": {
                "coding": [
                    {"system": _system(c["scheme"]), "code": c["value"], "display": c["meaning"]}
                    for c in f["codes"]
                ],
                "text": f["name"],
            },
            "valueQuantity": {"value": f["probability"], "unit": "probability", "system": UCUM, "code": "1"},
            "interpretation": [
                {
                    "coding": [{"system": INTERPRETATION_SYSTEM, "code": code, "display": display}],
                    "text": f["call"],
                }
            ],
            "referenceRange": [
                {
                    "high": {"value": f["threshold"], "system": UCUM, "code": "1"},
                    "text": "decision threshold: present at or above",
                }
            ],
            "device": {"reference": f"urn:uuid:{dev_id}"},
            "issued": created,
            "note": notes,
        }
        if subject:
            fields["subject"] = subject
        if effective:
            fields["effectiveDateTime"] = effective
        entries.append((oid, Observation(**fields)))
        obs_refs.append({"reference": f"urn:uuid:{oid}", "display": f["name"]})

    present = [f["name"] for f in doc["findings"] if f["call"] == "present"]
    conclusion = [disclaimer]
    conclusion.append("Findings called present: " + (", ".join(present) if present else "none") + ".")
    if doc["summary"].get("no_valid_score"):
        conclusion.append("No valid score for: " + ", ".join(doc["summary"]["no_valid_score"]) + ".")
    conclusion += [f"QC warning {w['code']}: {w['message']}" for w in qc]
    report_fields: dict[str, Any] = {
        "id": _uuid(rid, "report"),
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{rid}"}],
        "status": "preliminary",
        "category": [{"coding": [{"system": DIAGNOSTIC_SERVICE, "code": "RAD", "display": "Radiology"}]}],
        "code": {"coding": [REPORT_CODE], "text": "HyperCT AI screening of a chest CT (25 findings)"},
        "issued": created,
        "result": obs_refs,
        "conclusion": " ".join(conclusion),
    }
    study_uid = doc["input"].get("StudyInstanceUID")
    if study_uid:
        report_fields["imagingStudy"] = [
            {
                "identifier": {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study_uid}"},
                "display": "CT study",
            }
        ]
    if mode == "clinical" and (patient.get("identifiers") or {}).get("AccessionNumber"):
        report_fields["identifier"].append(
            {
                "type": {"coding": [{"system": IDENTIFIER_TYPE, "code": "ACSN"}]},
                "value": patient["identifiers"]["AccessionNumber"],
            }
        )
    if subject:
        report_fields["subject"] = subject
    if effective:
        report_fields["effectiveDateTime"] = effective
    report = DiagnosticReport(**report_fields)
    entries.insert(0, (report_fields["id"], report))
    return Bundle(
        id=_uuid(rid, "bundle"),
        type="collection",
        timestamp=created,
        entry=[{"fullUrl": f"urn:uuid:{i}", "resource": r} for i, r in entries],
    )


def bundle_json(doc: dict[str, Any]) -> str:
    """The bundle as JSON text (validated on construction)."""
    return build_bundle(doc).model_dump_json(indent=2, exclude_none=True)


def parse_bundle(text: str):
    """Parse (and validate) FHIR JSON text as an R4B Bundle."""
    from fhir.resources.R4B.bundle import Bundle

    return Bundle.model_validate_json(text)
