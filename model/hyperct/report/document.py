"""The report document: one JSON-ready dict per scan, validated by ``assets/report.schema.json``.

The same dict feeds the JSON file, the PDF and the DICOM SR, so the three always agree (the
probabilities in the SR are the JSON's, rounded to 6 decimals once, here).
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from importlib import resources
from typing import Any

from hyperct import DISCLAIMER, __version__
from hyperct.errors import ExportError
from hyperct.findings import GROUP_LABELS, catalogue
from hyperct.report import deid
from hyperct.report.coding import finding_codes
from hyperct.results import CALL_NO_SCORE, SCORED_CALLS, AnalysisResult
from hyperct.volume import CTVolume

SCHEMA_FILE = "report.schema.json"
SCHEMA_VERSION = "1.0"
SCHEMA_ID = f"urn:hyperct-viewer:schema:report:{SCHEMA_VERSION}"
SOFTWARE_NAME = "HyperCT Viewer"
PACKAGE_NAME = "hyperct-viewer"
DECIMALS = 6

LIMITATIONS = (
    "The output is a probability per finding from an AI model, not a diagnosis; every finding must "
    "be confirmed by a qualified reader on the images.",
    "The model sees the whole scan resampled to 165 x 144 x 144 voxels; small findings may be missed.",
    "Thresholds turn probabilities into present/absent calls; their calibration is stated in the model card.",
    "Saliency maps show where the model's score is sensitive, not the extent or location of a lesion.",
    "Opportunistic (cardiac) findings are echocardiographic labels predicted from CT; they are not "
    "measured on the CT.",
)


FORMAT_NAMES = {"dicom": "DICOM", "nifti": "NIfTI", "nrrd": "NRRD", "mha": "MetaImage", "array": "array"}


def format_name(source_format: str) -> str:
    """Display name of an input format ("nifti" -> "NIfTI")."""
    return FORMAT_NAMES.get(source_format, str(source_format).upper())


@lru_cache(maxsize=1)
def schema() -> dict:
    """The report JSON Schema (Draft 2020-12) shipped in ``hyperct.assets``."""
    text = resources.files("hyperct.assets").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    return json.loads(text)


def validate_document(doc: dict) -> None:
    """Raise ``ExportError`` listing the first problems if ``doc`` does not match the schema."""
    from jsonschema import Draft202012Validator

    errors = sorted(Draft202012Validator(schema()).iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}" for e in errors[:5]]
        raise ExportError(
            "the report document does not match its schema: " + "; ".join(lines),
            hint="this is a bug in HyperCT Viewer; please report it with the input's description",
        )


def to_json(doc: dict, *, indent: int | None = 2) -> str:
    """The document as JSON text (never NaN/Infinity: ``check_finite`` first, a typed error)."""
    check_finite(doc)
    text = json.dumps(doc, indent=indent, ensure_ascii=False, allow_nan=False)
    return text + "\n" if indent is not None else text


def check_finite(doc: Any, where: str = "") -> None:
    """Raise ``ExportError`` naming the first non-finite number in ``doc`` (JSON has no NaN/Infinity)."""
    if isinstance(doc, float) and not math.isfinite(doc):
        raise ExportError(
            f"the report holds a non-finite number ({doc}) at {where or '(root)'}, which JSON cannot carry",
            hint="check the input's header values (spacing, thickness) and the model's output; "
            "please report it if the input is sound",
        )
    if isinstance(doc, dict):
        for k, v in doc.items():
            check_finite(v, f"{where}/{k}" if where else str(k))
    elif isinstance(doc, list | tuple):
        for n, v in enumerate(doc):
            check_finite(v, f"{where}/{n}")


def _r(x: float | None) -> float | None:
    if x is None or not math.isfinite(float(x)):
        return None
    return round(float(x), DECIMALS)


def key_instance(volume: CTVolume | None, k: int) -> dict[str, str] | None:
    """The DICOM instance holding canonical slice ``k`` (axial acquisitions only), else None."""
    if volume is None or not volume.is_dicom or volume.reorientation.perm[0] != 0:
        return None
    refs = volume.metadata.get("ReferencedInstances") or []
    if len(refs) != volume.shape[0] or not 0 <= k < len(refs):
        return None
    ref = refs[k]
    return {"SOPClassUID": str(ref["SOPClassUID"]), "SOPInstanceUID": str(ref["SOPInstanceUID"])}


def _saliency_block(result: AnalysisResult, fid: str, volume: CTVolume | None, saliency) -> dict | None:
    summary = None
    if saliency is not None and volume is not None and fid in saliency:
        summary = saliency.summary(fid, volume)
    elif result[fid].saliency is not None:
        summary = result[fid].saliency
    if summary is None:
        return None
    block = {
        "method": summary.method,
        "key_slice": int(summary.key_slice),
        "peak_index": [int(v) for v in summary.peak_index],
        "peak_lps_mm": [round(float(v), 2) for v in summary.peak_lps_mm],
    }
    inst = key_instance(volume, int(summary.key_slice))
    if inst:
        block["key_instance"] = inst
    return block


def _patient_block(metadata: dict[str, Any], mode: str, key: deid.LinkKey | None) -> dict:
    block: dict[str, Any] = {
        "sex": metadata.get("PatientSex") or None,
        "age": metadata.get("PatientAge") or None,
    }
    if mode == deid.CLINICAL:
        block["identifiers"] = deid.identifiers(metadata)
        block["link_ids"] = {}
    else:
        block["identifiers"] = {}
        block["link_ids"] = deid.link_ids(metadata, key.key) if key else {}
    return block


def _input_block(result: AnalysisResult, mode: str, metadata: dict[str, Any]) -> dict:
    """What was analysed. Shareable mode (DICOM PS3.15 Annex E, see ``deid``): no descriptions, no
    paths, QC warnings rebuilt from the project's words, device texts without the patient's identifiers."""
    src = dict(result.input)
    shareable = mode == deid.SHAREABLE
    warnings = [dict(w) for w in src.get("qc_warnings") or []]

    def device(v):
        return deid.device_text(v, metadata) if shareable else (None if v in (None, "") else str(v))

    out = {
        "type": src.get("type"),
        "StudyInstanceUID": src.get("StudyInstanceUID"),
        "SeriesInstanceUID": src.get("SeriesInstanceUID"),
        "FrameOfReferenceUID": src.get("FrameOfReferenceUID"),
        "StudyDate": _date(src.get("StudyDate")) if shareable else src.get("StudyDate"),
        "SeriesDescription": None if shareable else src.get("SeriesDescription"),
        "slices": int(src.get("slices") or 0),
        "matrix": [int(v) for v in src.get("matrix") or []],
        "spacing_mm": {
            k: _finite(v, f"input/spacing_mm/{k}") for k, v in (src.get("spacing_mm") or {}).items()
        },
        "slice_thickness_mm": _float_or_none(src.get("slice_thickness_mm")),
        "orientation": src.get("orientation"),
        "direction": _direction(src.get("direction")),
        "manufacturer": device(src.get("manufacturer")),
        "scanner_model": device(src.get("model")),
        "kernel": device(src.get("kernel")),
        "kvp": _float_or_none(src.get("kvp")),
        "qc_warnings": deid.shareable_warnings(warnings) if shareable else warnings,
    }
    if mode == deid.CLINICAL:
        out["source_paths"] = list(src.get("source_paths") or [])
    selection = src.get("series_selection")
    if selection:
        out["series_selection"] = _selection_block(selection, mode)
    return out


def _date(v: Any) -> str | None:
    """A DICOM date kept by the Full Dates option: digits only (YYYYMMDD), anything else dropped."""
    s = str(v or "").strip()
    return s if len(s) == 8 and s.isdigit() else None


def _finite(v: Any, where: str) -> float:
    x = float(v)
    if not math.isfinite(x):
        raise ExportError(
            f"the input's {where.split('/')[-1]} spacing is {x}, not a finite number, so the report cannot "
            f"state it ({where})",
            hint="fix the PixelSpacing/slice positions in the input's header (or its NIfTI pixdim)",
        )
    return x


def _direction(d: Any) -> list | None:
    if d is None:
        return None
    rows = [[float(v) for v in row] for row in d]
    return rows if all(math.isfinite(v) for row in rows for v in row) else None


def _selection_block(selection: dict, mode: str) -> dict:
    """How the series was chosen and which series of the input were skipped, and why.

    Shareable mode keeps only words from the project's own vocabulary (``category``); clinical mode
    the reader's full reason. Series descriptions are never included.
    """
    skipped = []
    for s in selection.get("skipped") or []:
        entry = {k: s.get(k) for k in _SKIPPED_KEYS}
        entry["reason"] = s.get("reason") if mode == deid.CLINICAL else (s.get("category") or s.get("reason"))
        skipped.append(entry)
    return {"rule": str(selection.get("rule") or ""), "skipped": skipped}


_SKIPPED_KEYS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "modality",
    "slices",
    "slice_thickness_mm",
)


def _float_or_none(v: Any) -> float | None:
    """A number for an optional field: None when absent, not a number, NaN or infinite."""
    try:
        x = None if v in (None, "") else float(v)
    except (TypeError, ValueError):
        return None
    return x if x is not None and math.isfinite(x) else None


def build_document(
    result: AnalysisResult,
    volume: CTVolume | None = None,
    saliency=None,
    *,
    mode: str = deid.SHAREABLE,
    report_id: str | None = None,
    created: str | None = None,
    key: deid.LinkKey | None = None,
) -> dict:
    """The report of ``result`` as a JSON-ready dict (validated against the schema).

    ``volume`` gives the patient fields and positions of the saliency peaks; ``saliency``
    (``SaliencyMaps``) the per-finding saliency summaries (else ``FindingResult.saliency``).
    ``report_id``/``created`` default to the result's own. In shareable mode the link key is read
    (``deid.link_key()``) unless ``key`` is given.
    """
    mode = deid.check_mode(mode)
    if mode == deid.SHAREABLE and key is None:
        key = deid.link_key()
    metadata = volume.metadata if volume is not None else _metadata_from_input(result)
    cat = catalogue()
    findings = []
    for f in result.findings:
        entry = cat[f.id]
        assessed = f.call in SCORED_CALLS and f.probability is not None
        findings.append(
            {
                "index": int(f.index),
                "id": f.id,
                "name": f.name,
                "group": f.group,
                "group_label": GROUP_LABELS[f.group],
                "codes": finding_codes(entry),
                "probability": _r(f.probability) if assessed else None,
                "logit": _r(f.logit) if assessed and f.logit is not None else None,
                "threshold": _r(f.threshold),
                "threshold_high_specificity": bool(f.high_specificity_threshold),
                "call": f.call,
                "saliency": _saliency_block(result, f.id, volume, saliency) if assessed else None,
            }
        )
    methods = {x["saliency"]["method"] for x in findings if x["saliency"]}
    m = result.model
    doc = {
        "schema": SCHEMA_ID,
        "schema_version": SCHEMA_VERSION,
        "report_id": report_id or result.report_id,
        "created": created or result.created,
        "software": {"name": SOFTWARE_NAME, "package": PACKAGE_NAME, "version": __version__},
        "disclaimer": DISCLAIMER,
        "export": {
            "mode": mode,
            "description": deid.METHOD_TEXT
            if mode == deid.SHAREABLE
            else "Clinical export: patient identifiers kept as in the input.",
            "link_key_source": key.source if (mode == deid.SHAREABLE and key) else None,
            "deidentification": deid.deidentification_block() if mode == deid.SHAREABLE else None,
        },
        "patient": _patient_block(metadata, mode, key),
        "model": {
            "name": m.name,
            "version": m.version,
            "weights_sha256": m.weights_sha256,
            "backbone": m.backbone,
            "demo": bool(m.is_demo),
            "intended_use": m.intended_use,
            "threshold_method": m.threshold_method,
            "device": result.device,
            "weights_dtype": m.weights_dtype,
        },
        "input": _input_block(result, mode, metadata),
        "preprocessing": json.loads(json.dumps(result.preprocessing, default=str)),
        "saliency_method": sorted(methods)[0] if len(methods) == 1 else (None if not methods else "mixed"),
        "findings": findings,
        "summary": {
            "assessed": sum(1 for x in findings if x["call"] in SCORED_CALLS),
            "present": [x["id"] for x in findings if x["call"] == "present"],
            "no_valid_score": [x["id"] for x in findings if x["call"] == CALL_NO_SCORE],
        },
        "limitations": list(LIMITATIONS),
    }
    check_finite(doc)
    validate_document(doc)
    return doc


def _metadata_from_input(result: AnalysisResult) -> dict[str, Any]:
    return dict(result.input.get("identifiers") or {})
