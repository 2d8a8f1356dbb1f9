"""``export``: the one function that writes a scan's report files (the viewer's Export buttons and
``hyperct predict`` both call it, so they produce the same files for the same scan).

Files, in ``out_dir``, for a ``stem`` (default: from the input's name, see ``default_stem``):

* ``<stem>.hyperct.json``: the report document (schema ``assets/report.schema.json``);
* ``<stem>.hyperct.pdf``: the PDF report;
* ``<stem>.hyperct.sr.dcm``: DICOM Comprehensive 3D SR, TID 1500 (DICOM input only);
* ``<stem>.saliency.<finding>.nii.gz``: saliency maps in the input's geometry (``saliency_findings``),
  uint8 with the scaling 1/255 in the header, gzip-compressed (``hyperct.report.maps``).

Everything is rendered in memory first; then each file is written atomically. Nothing is
replaced unless ``overwrite=True``: if any target exists, ``ExportError`` names it and nothing is
written.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from hyperct.errors import ExportError
from hyperct.report import deid
from hyperct.report.atomic import check_targets, write_atomic
from hyperct.results import CALL_PRESENT, SCORED_CALLS, AnalysisResult
from hyperct.volume import PHI_KEYS, CTVolume

FORMATS = ("json", "pdf", "sr")
SUFFIXES = {"json": ".hyperct.json", "pdf": ".hyperct.pdf", "sr": ".hyperct.sr.dcm"}
_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".dicom", ".ima")


def default_stem(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | CTVolume) -> str:
    """Output file-name stem for an input: a file's name without its image suffix, a folder's name.

    ``source`` is what was opened (path, list of paths) or a ``CTVolume`` (its source paths are
    used: one image file -> its name; several DICOM files -> their common folder's name). A
    DICOMDIR gives its folder's name. Exports use ``derived_stem``, which replaces a stem carrying
    patient identifiers by a pseudonym in shareable mode.
    """
    if isinstance(source, CTVolume):
        paths = [Path(p) for p in source.source_paths]
        if not paths:
            return "scan"
        if len(paths) == 1:
            return default_stem(paths[0])
        common = Path(os.path.commonpath([str(p.parent) for p in paths]))
        return _clean(common.name or "scan")
    if not isinstance(source, str | os.PathLike):
        paths = [Path(p) for p in source]
        if len(paths) == 1:
            return default_stem(paths[0])
        if not paths:
            return "scan"
        return _clean(Path(os.path.commonpath([str(p.parent) for p in paths])).name or "scan")
    p = Path(source)
    name = p.name
    if name.upper() == "DICOMDIR":
        name = p.resolve().parent.name
    elif not p.is_dir():
        low = name.lower()
        for suffix in _IMAGE_SUFFIXES:
            if low.endswith(suffix) and len(name) > len(suffix):
                name = name[: -len(suffix)]
                break
    elif not name:
        name = p.resolve().name
    return _clean(name or "scan")


def _identifier_tokens(metadata: dict) -> list[str]:
    """Lower-case fragments of the patient identifiers that must not appear in a shareable file name."""
    tokens: list[str] = []
    for key in PHI_KEYS:
        value = metadata.get(key)
        if value is None:
            continue
        values = value if isinstance(value, list | tuple) else [value]
        for v in values:
            text = str(v).strip().lower()
            if not text:
                continue
            if key == "PatientName":
                # family, given, middle names: each part on its own ("DOE^JOHN" -> doe, john)
                parts = [t for t in "".join(c if c.isalnum() else " " for c in text).split() if len(t) >= 3]
                tokens.extend(parts)
            elif len(text) >= 3:
                tokens.append(text)
    return tokens


def reveals_identifiers(stem: str, metadata: dict) -> bool:
    """Whether a file-name stem contains the patient's name, ID, birth date or accession number."""
    low = stem.lower()
    squeezed = "".join(c for c in low if c.isalnum())
    for token in _identifier_tokens(metadata):
        if token in low:
            return True
        t = "".join(c for c in token if c.isalnum())
        if len(t) >= 3 and t in squeezed:
            return True
    return False


def pseudonymous_stem(metadata: dict, fallback: str) -> str:
    """``scan-<12 hex>``: stable for a series (a hash of its UID), meaningless without the data."""
    uid = metadata.get("SeriesInstanceUID") or metadata.get("StudyInstanceUID") or fallback
    return "scan-" + hashlib.sha256(f"hyperct-stem:{uid}".encode()).hexdigest()[:12]


def derived_stem(source, volume: CTVolume, mode: str = deid.SHAREABLE) -> str:
    """The default stem for ``source`` (``default_stem``), made safe for ``mode``.

    In shareable mode a stem that carries the patient's name, ID, birth date or accession number
    (DICOM folders are often named after the patient) is replaced by ``pseudonymous_stem``, so the
    file names do not undo the de-identification of their content. An explicit stem is never changed.
    """
    stem = default_stem(source if source is not None else volume)
    if deid.check_mode(mode) == deid.SHAREABLE and reveals_identifiers(stem, volume.metadata):
        return pseudonymous_stem(volume.metadata, stem)
    return stem


def _clean(name: str) -> str:
    bad = '<>:"/\\|?*\0'
    out = "".join("_" if c in bad or ord(c) < 32 else c for c in name).strip(" .")
    return out or "scan"


def output_paths(
    out_dir: str | os.PathLike[str],
    stem: str,
    formats: Sequence[str] = FORMATS,
    saliency_findings: Sequence[str] = (),
) -> dict[str, Path]:
    """Where ``export`` writes each format (``saliency:<id>`` keys for the maps)."""
    from hyperct.report.maps import map_file_name

    out = Path(out_dir)
    paths = {fmt: out / f"{stem}{SUFFIXES[fmt]}" for fmt in formats}
    for fid in saliency_findings:
        paths[f"saliency:{fid}"] = out / map_file_name(stem, fid)
    return paths


def check_formats(formats: Sequence[str], volume: CTVolume | None = None) -> list[str]:
    formats = list(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ExportError(f"unknown export format(s) {', '.join(unknown)}", hint=f"use {', '.join(FORMATS)}")
    if "sr" in formats and volume is not None:
        from hyperct.report.sr import check_sr_input

        check_sr_input(volume)
    return formats


def saliency_targets(result: AnalysisResult, saliency_findings: Sequence[str] | str | None) -> list[str]:
    """Finding ids whose maps are written: ``"all"`` (assessed ones), ``"positive"``, a list, or none."""
    if saliency_findings is None:
        return []
    assessed = [f.id for f in result.findings if f.call in SCORED_CALLS]
    if isinstance(saliency_findings, str):
        if saliency_findings == "all":
            return assessed
        if saliency_findings in ("positive", "positives"):
            return [f.id for f in result.findings if f.call == CALL_PRESENT]
        saliency_findings = [s for s in saliency_findings.split(",") if s.strip()]
    ids = [s.strip() for s in saliency_findings]
    from hyperct.findings import catalogue

    cat = catalogue()
    for fid in ids:
        try:
            cat[fid]
        except KeyError as exc:
            raise ExportError(
                str(exc.args[0]), hint="use finding ids as listed by the findings table"
            ) from None
    not_assessed = [fid for fid in ids if fid not in assessed]
    if not_assessed:
        raise ExportError(
            f"no saliency map for finding(s) without a score: {', '.join(not_assessed)}",
            hint="score these findings too (drop --findings), or choose assessed findings",
        )
    return list(dict.fromkeys(ids))


def saliency_for_export(
    loaded,
    volume: CTVolume,
    result: AnalysisResult,
    *,
    method: str | None = None,
    extra: Sequence[str] = (),
    task_chunk: int | None = None,
):
    """The saliency maps an export needs, computed the same way for the CLI and the viewer.

    ``method``: default ``hyperct.saliency.DEFAULT_METHOD``. A batched method (one backward for all
    findings): every assessed finding, so each finding in the JSON has its saliency summary. A
    method that needs a pass per finding: only the positive findings shown as key images plus
    ``extra`` (e.g. those written as NIfTI); others have no summary.
    """
    from hyperct.report.pdf import MAX_KEY_IMAGES
    from hyperct.saliency import DEFAULT_METHOD, METHODS, compute_saliency

    method = method or DEFAULT_METHOD

    assessed = [f.id for f in result.findings if f.call in SCORED_CALLS]
    if not assessed:
        return None
    batched = METHODS[method].batched if method in METHODS else False
    if batched:
        ids = assessed
    else:
        pos = sorted(result.positives, key=lambda f: -(f.probability or 0))[:MAX_KEY_IMAGES]
        ids = list(dict.fromkeys([f.id for f in pos] + [i for i in extra if i in assessed]))
        if not ids:
            return None
    kwargs = {"task_chunk": task_chunk} if (task_chunk and batched) else {}
    return compute_saliency(loaded, volume, ids, method=method, **kwargs)


def export(
    result: AnalysisResult,
    volume: CTVolume,
    saliency=None,
    out_dir: str | os.PathLike[str] = ".",
    formats: Sequence[str] = FORMATS,
    *,
    mode: str = deid.SHAREABLE,
    overwrite: bool = False,
    stem: str | None = None,
    saliency_findings: Sequence[str] | str | None = None,
    key_findings: Sequence[str] | None = None,
    report_id: str | None = None,
    created: str | None = None,
) -> dict[str, Path]:
    """Write the report of one scan; return ``{format: path}`` (``saliency:<id>`` for each map).

    ``saliency``: ``SaliencyMaps`` (e.g. from ``saliency_for_export``) for the saliency summaries,
    the PDF's key images and the NIfTI maps; None leaves them out. ``saliency_findings``: maps to
    write as NIfTI ("all", "positive", or ids). ``key_findings``: findings whose key images the
    PDF shows (default: the positives). ``mode``: "shareable" (default) or "clinical".
    ``report_id``/``created`` default to the result's (injectable for reproducible files).
    """
    mode = deid.check_mode(mode)
    formats = check_formats(formats, volume)
    maps = saliency_targets(result, saliency_findings)
    if maps and saliency is None:
        raise ExportError(
            "saliency maps were requested but none were computed", hint="pass the SaliencyMaps of this scan"
        )
    missing = [fid for fid in maps if fid not in saliency] if maps else []
    if missing:
        raise ExportError(
            f"no saliency map was computed for {', '.join(missing)}",
            hint="compute saliency for these findings first (saliency_for_export(..., extra=ids))",
        )
    stem = _clean(stem) if stem else derived_stem(None, volume, mode)
    paths = output_paths(out_dir, stem, formats, maps)
    check_targets(paths.values(), overwrite=overwrite)

    rendered = render(
        result,
        volume,
        saliency,
        formats,
        mode=mode,
        key_findings=key_findings,
        report_id=report_id,
        created=created,
    )
    if maps:
        from hyperct.report.maps import saliency_nifti_bytes

        for fid in maps:
            desc = f"HyperCT saliency {fid} {saliency.method} report {rendered['doc']['report_id'][:8]}"
            rendered[f"saliency:{fid}"] = saliency_nifti_bytes(volume, saliency.volume_map(fid), desc)
    written = {}
    for key, path in paths.items():
        written[key] = write_atomic(path, rendered[key], overwrite=overwrite)
    return written


def render(
    result: AnalysisResult,
    volume: CTVolume,
    saliency=None,
    formats: Sequence[str] = FORMATS,
    *,
    mode: str = deid.SHAREABLE,
    key_findings: Sequence[str] | None = None,
    report_id: str | None = None,
    created: str | None = None,
) -> dict:
    """The report in memory: ``{"doc": dict, "json": str, "pdf": bytes, "sr": bytes}`` (asked formats)."""
    from hyperct.report.document import build_document, to_json

    formats = check_formats(formats, volume)
    doc = build_document(result, volume, saliency, mode=mode, report_id=report_id, created=created)
    out: dict = {"doc": doc}
    if "json" in formats:
        out["json"] = to_json(doc)
    if "pdf" in formats:
        from hyperct.report.pdf import render_pdf

        out["pdf"] = render_pdf(
            doc, volume, saliency, key_findings=list(key_findings) if key_findings is not None else None
        )
    if "sr" in formats:
        from hyperct.report.sr import sr_bytes

        out["sr"] = sr_bytes(doc, volume)
    return out
