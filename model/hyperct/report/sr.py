"""DICOM SR: a Comprehensive 3D SR holding a TID 1500 Measurement Report (highdicom).

One measurement group (TID 1501) per finding, in catalogue order:

* tracking identifier = the finding id (UID derived from the report id, so re-exports are stable);
* finding type = the finding's code (checked SNOMED CT code, else local scheme 99HYPERCT);
* qualitative evaluation: the finding's code -> Present (SCT 52101004) / Absent (SCT 272519000);
* measurement "Probability" (DCM 122157) in UCUM ``{probability}`` (dimensionless);
* algorithm identification: model name and version, with the threshold, the decision rule and the
  weights sha256 as algorithm parameters;
* source image: the DICOM image of the saliency key slice, when known.

A finding that was not assessed keeps its group (tracking id, finding type, algorithm) with no
measurement and no evaluation. The source series is the evidence of the document: every
referenced CT image (``CTVolume.metadata["ReferencedInstances"]``) is listed in the Current
Requested Procedure Evidence Sequence under its Study/Series Instance UIDs. highdicom takes patient
and study attributes from the first evidence dataset; minimal pydicom datasets are built for that,
carrying de-identified values in shareable mode (empty name and birth date, Patient ID = link ID).
"""

from __future__ import annotations

import datetime as _dt
import uuid
from io import BytesIO

from hyperct import DISCLAIMER
from hyperct.errors import ExportError
from hyperct.findings import catalogue
from hyperct.report import deid
from hyperct.report.coding import local_scheme, primary_code
from hyperct.report.document import format_name
from hyperct.volume import CTVolume

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SERIES_NUMBER = 9901
MANUFACTURER = "HyperCT Viewer"


def _uid_from(report_id: str, label: str) -> str:
    """A UID in the 2.25 (UUID) arc derived from the report id and a label: stable per report."""
    u = uuid.uuid5(uuid.UUID(report_id), label)
    return f"2.25.{u.int}"


def sr_skip_reason(volume: CTVolume) -> str | None:
    """Why no DICOM SR can be made for ``volume`` (None: it can). Plain words, for users."""
    if not volume.is_dicom:
        return (
            f"a DICOM SR needs DICOM input, but the input is {format_name(volume.source_format)} "
            "(an SR must reference DICOM images)"
        )
    md = volume.metadata
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID") if not md.get(k)]
    if missing:
        return (
            f"the DICOM series has no {' and no '.join(missing)} (common in anonymised exports), and an SR "
            "must reference its images by these UIDs"
        )
    if not md.get("ReferencedInstances"):
        return (
            "the list of the series' images (SOP Instance UIDs) is not known, so the SR cannot reference them"
        )
    return None


def check_sr_input(volume: CTVolume) -> None:
    """Refuse (``ExportError``) when the input is not a DICOM series with referenced images."""
    why = sr_skip_reason(volume)
    if why is None:
        return
    src = volume.source_paths[0] if volume.source_paths else None
    raise ExportError(
        f"no DICOM SR for this scan: {why}" + (f" ({src})" if src else ""),
        hint="export the JSON or PDF report instead; an SR needs the original DICOM series with its "
        "Study and Series Instance UIDs",
    )


def _evidence(volume: CTVolume, doc: dict):
    from pydicom.dataset import Dataset

    md = volume.metadata
    shareable = doc["export"]["mode"] == deid.SHAREABLE
    out = []
    for n, ref in enumerate(md["ReferencedInstances"]):
        ds = Dataset()
        ds.SOPClassUID = str(ref.get("SOPClassUID") or CT_IMAGE_STORAGE)
        ds.SOPInstanceUID = str(ref["SOPInstanceUID"])
        ds.StudyInstanceUID = str(md["StudyInstanceUID"])
        ds.SeriesInstanceUID = str(md["SeriesInstanceUID"])
        if n == 0:  # highdicom copies patient/study attributes from the first evidence dataset
            ds.PatientName = "" if shareable else str(md.get("PatientName") or "")
            ds.PatientID = (
                doc["patient"]["link_ids"].get("PatientID", "")
                if shareable
                else str(md.get("PatientID") or "")
            )
            ds.PatientBirthDate = "" if shareable else str(md.get("PatientBirthDate") or "")
            ds.PatientSex = str(md.get("PatientSex") or "")
            ds.AccessionNumber = "" if shareable else str(md.get("AccessionNumber") or "")
            ds.StudyID = "" if shareable else str(md.get("StudyID") or "")
            ds.StudyDate = _digits(md.get("StudyDate"), 8) if shareable else str(md.get("StudyDate") or "")
            ds.StudyTime = _dicom_time(md.get("StudyTime")) if shareable else str(md.get("StudyTime") or "")
            ds.ReferringPhysicianName = "" if shareable else str(md.get("ReferringPhysicianName") or "")
            if md.get("PatientAge"):
                ds.PatientAge = str(md["PatientAge"])
            if md.get("StudyDescription") and not shareable:  # Annex E: removed (no descriptor option)
                ds.StudyDescription = str(md["StudyDescription"])
        out.append(ds)
    return out


def build_sr(doc: dict, volume: CTVolume):
    """The SR dataset (``highdicom.sr.Comprehensive3DSR``) of a report document for a DICOM input."""
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.sr.codedict import codes

    check_sr_input(volume)
    cat = catalogue()
    report_id = doc["report_id"]
    model = doc["model"]
    device_observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=_uid_from(report_id, "device"),
            name=f"{doc['software']['name']} {doc['software']['version']}"[:64],
            manufacturer_name=MANUFACTURER,
            model_name=f"{model['name']} {model['version']}"[:64],
        ),
    )
    context = hd.sr.ObservationContext(observer_device_context=device_observer)
    present = hd.sr.CodedConcept.from_code(codes.SCT.Present)
    absent = hd.sr.CodedConcept.from_code(codes.SCT.Absent)
    probability = hd.sr.CodedConcept.from_code(codes.DCM.Probability)
    unit = hd.sr.CodedConcept("{probability}", "UCUM", "probability")
    groups = []
    for f in doc["findings"]:
        code = primary_code(cat[f["id"]])
        finding_code = hd.sr.CodedConcept(code["value"], code["scheme"], code["meaning"])
        algorithm = hd.sr.AlgorithmIdentification(
            name=model["name"][:64],
            version=model["version"][:64],
            parameters=[
                f"finding={f['id']}",
                f"threshold={f['threshold']:.6f}",
                "decision=present if probability >= threshold",
                f"weights_sha256={model['weights_sha256']}",
                f"demo_model={'yes' if model['demo'] else 'no'}",
            ],
        )
        measurements, evaluations, sources = [], [], []
        if f["call"] in ("present", "absent"):  # not "not assessed" nor "no valid score"
            measurements.append(hd.sr.Measurement(name=probability, value=f["probability"], unit=unit))
            evaluations.append(
                hd.sr.QualitativeEvaluation(
                    name=finding_code, value=present if f["call"] == "present" else absent
                )
            )
            inst = (f.get("saliency") or {}).get("key_instance")
            if inst:
                sources.append(
                    hd.sr.SourceImageForMeasurementGroup(inst["SOPClassUID"], inst["SOPInstanceUID"])
                )
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=_uid_from(report_id, f["id"]), identifier=f["id"]
                ),
                finding_type=finding_code,
                algorithm_id=algorithm,
                measurements=measurements or None,
                qualitative_evaluations=evaluations or None,
                source_images=sources or None,
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=codes.SCT.ComputedTomography,
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
    )
    _add_qc_evaluations(report, doc)
    description = ("HyperCT DEMO - " if model["demo"] else "HyperCT - ") + DISCLAIMER
    sr = hd.sr.Comprehensive3DSR(
        evidence=_evidence(volume, doc),
        content=report,
        series_instance_uid=_uid_from(report_id, "series"),
        series_number=SERIES_NUMBER,
        sop_instance_uid=_uid_from(report_id, "instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=description[:64],
    )
    sr.SoftwareVersions = doc["software"]["version"]
    sr.ManufacturerModelName = f"{model['name']} {model['version']}"[:64]
    created = _dt.datetime.fromisoformat(doc["created"].replace("Z", "+00:00"))
    for prefix in ("Content", "InstanceCreation", "Series"):
        setattr(sr, f"{prefix}Date", created.strftime("%Y%m%d"))
        setattr(sr, f"{prefix}Time", created.strftime("%H%M%S"))
    sr.TimezoneOffsetFromUTC = _tz_offset(created)
    for item in sr.get("ContributingEquipmentSequence") or []:  # highdicom stamps "now": use the report time
        if "ContributionDateTime" in item:
            item.ContributionDateTime = created.strftime("%Y%m%d%H%M%S") + _tz_offset(created)
    scheme = local_scheme()
    item = Dataset()
    item.CodingSchemeDesignator = scheme["designator"]
    item.CodingSchemeName = scheme["name"]
    item.CodingSchemeVersion = str(scheme["version"])
    item.CodingSchemeResponsibleOrganization = "HyperCT Viewer developers"
    sr.CodingSchemeIdentificationSequence = [item]
    if doc["export"]["mode"] == deid.SHAREABLE:
        sr.PatientIdentityRemoved = "YES"
        sr.DeidentificationMethod = deid.METHOD_SHORT
        sr.DeidentificationMethodCodeSequence = [
            _code_item(c) for c in (deid.PROFILE, *deid.RETAINED_OPTIONS)
        ]
        sr.LongitudinalTemporalInformationModified = "UNMODIFIED"  # the Full Dates option
    return sr


def _code_item(code: tuple[str, str, str]):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code
    return item


def _digits(value, n: int) -> str:
    s = str(value or "").strip()
    return s if len(s) == n and s.isdigit() else ""


def _dicom_time(value) -> str:
    """A DICOM TM kept by the Full Dates option: HHMMSS[.ffffff] digits only, anything else dropped."""
    s = str(value or "").strip()
    head, _, frac = s.partition(".")
    ok = 2 <= len(head) <= 6 and len(head) % 2 == 0 and head.isdigit() and (not frac or frac.isdigit())
    return s if ok else ""


QUALITATIVE_EVALUATIONS = ("C0034375", "UMLS", "Qualitative Evaluations")  # TID 1500 row 12
QUALITY_ISSUE = ("113010", "DCM", "Quality Issue")
OUT_OF_SCOPE_TEXT = "Input out of scope for the model; the probabilities may be meaningless"


def _add_qc_evaluations(report, doc: dict) -> None:
    """Out-of-scope QC warnings as TEXT items in TID 1500's root "Qualitative Evaluations" container.

    highdicom's MeasurementReport does not build that container, so it is appended to the root's
    content: CONTAINER (C0034375, UMLS, "Qualitative Evaluations") CONTAINS TEXT (113010, DCM,
    "Quality Issue") items, the first saying the input is out of scope, then one per warning.
    """
    import highdicom as hd

    from hyperct.io.quality import out_of_scope

    scope = out_of_scope(doc["input"]["qc_warnings"])
    if not scope:
        return
    name = hd.sr.CodedConcept(*QUALITY_ISSUE)
    items = [hd.sr.TextContentItem(name=name, value=OUT_OF_SCOPE_TEXT, relationship_type="CONTAINS")]
    for w in scope:
        items.append(
            hd.sr.TextContentItem(
                name=name, value=f"{w.code}: {w.message}"[:1024], relationship_type="CONTAINS"
            )
        )
    container = hd.sr.ContainerContentItem(
        name=hd.sr.CodedConcept(*QUALITATIVE_EVALUATIONS), relationship_type="CONTAINS"
    )
    container.ContentSequence = hd.sr.ContentSequence(items)
    report[0].ContentSequence.append(container)


def _tz_offset(t: _dt.datetime) -> str:
    off = t.utcoffset() or _dt.timedelta(0)
    minutes = int(off.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60:02d}{minutes % 60:02d}"


def sr_bytes(doc: dict, volume: CTVolume) -> bytes:
    """The SR as DICOM Part 10 bytes."""
    sr = build_sr(doc, volume)
    buf = BytesIO()
    sr.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
