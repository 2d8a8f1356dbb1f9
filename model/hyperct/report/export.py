"""``export``: the one function that writes a scan's report files (the viewer's Export buttons and
``hyperct predict`` both call it, so they produce the same files for the same scan).

Files, in ``out_dir``, for a ``stem`` (default: from the input's name, see ``default_stem``):

* ``<stem>.hyperct.json``: the report document (schema ``assets/report.schema.json``);
* ``<stem>.hyperct.pdf``: the PDF report;
* ``<stem>.hyperct.sr.dcm``: DICOM Comprehensive 3D SR, TID 1500 (DICOM input only);
* ``<stem>.hyperct.fhir.json``: FHIR R4 Bundle, a DiagnosticReport and one Observation per
  assessed finding (``hyperct.report.fhir``), built from the same document as the JSON;
* ``<stem>.saliency.<finding>.nii.gz``: saliency maps in the input's geometry (``saliency_findings``),
  uint8 with the scaling 1/255 in the header, gzip-compressed (``hyperct.report.maps``).

The files of one scan form a set, written so they land together:

1. everything is rendered in memory; the targets are checked (nothing is replaced unless
   ``overwrite=True``: if a target exists, ``OutputExistsError`` names it and nothing is written);
2. under the scan's lock (``.<stem>.hyperct.lock``: two writers of one stem in one folder take
   turns, so their files never interleave), temporary files a killed run left behind are removed;
3. every file is written to a temporary name (``.<name>.<random>.tmp``) and fsync'ed; a failure
   here (a full disk) removes them all and nothing is written;
4. the set record ``.<stem>.hyperct.set`` (JSON: report id, file names, ``complete``) is written with
   ``complete: false``, the files are moved to their names (maps, SR, PDF, and the JSON last: a JSON
   file means its set is complete), and the record is marked complete.

A run killed in step 4 leaves the record incomplete: the next export of that stem replaces the
files it lists without needing ``overwrite``. A failure in step 4 raises ``ExportError`` whose
``written`` attribute maps the formats already in place to their paths. Files under one stem come
from one report: an export of another report that would leave some of the earlier report's files
beside its own is refused without ``overwrite``; with it, the earlier report's other files are
removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from hyperct.errors import ExportError, OutputExistsError
from hyperct.report import deid
from hyperct.report.atomic import (
    TEMP_NAME,
    check_targets,
    place,
    stage,
    stem_lock,
    temp_pattern,
    write_atomic,
)
from hyperct.results import CALL_PRESENT, SCORED_CALLS, AnalysisResult
from hyperct.volume import CTVolume

FORMATS = ("json", "pdf", "sr")  # what an export writes when no formats are given
ALL_FORMATS = (*FORMATS, "fhir")  # FHIR R4 Bundle (report/fhir.py) on request
SUFFIXES = {
    "json": ".hyperct.json",
    "pdf": ".hyperct.pdf",
    "sr": ".hyperct.sr.dcm",
    "fhir": ".hyperct.fhir.json",
}
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


# What pseudonymous_stem makes (and predict's -<tag> / -N suffixes): hashes, never an identifier,
# even where a short numeric ID happens to occur among the hex digits.
PSEUDONYM = re.compile(r"scan-[0-9a-f]{12}(-[0-9a-f]{12})?(-\d+)?")


def reveals_identifiers(stem: str, metadata: dict) -> bool:
    """Whether a file-name stem holds a part of the patient's name, an ID, the birth date or the
    accession number (any length: "NG_LI_77" for NG^LI with ID 77; see ``deid.contains_identifier``)."""
    return deid.contains_identifier(stem, metadata)


def pseudonymous_stem(metadata: dict, fallback: str, key: bytes | None = None) -> str:
    """``scan-<12 hex>``: stable for a series, meaningless without the data.

    A hash of the SeriesInstanceUID (or StudyInstanceUID), which shareable exports keep anyway;
    without UIDs (NIfTI, NRRD) a keyed hash (HMAC-SHA256 with the link key) of ``fallback`` (the
    input's name), so a guessed name cannot be checked against the file name without the key.
    """
    uid = metadata.get("SeriesInstanceUID") or metadata.get("StudyInstanceUID")
    if uid:
        return "scan-" + hashlib.sha256(f"hyperct-stem:{uid}".encode()).hexdigest()[:12]
    if key is None:
        key = deid.link_key().key
    return "scan-" + deid.link_id("stem", fallback, key)[:12]


def derived_stem(source, volume: CTVolume, mode: str = deid.SHAREABLE) -> str:
    """The default stem for ``source`` (``default_stem``), made safe for ``mode``.

    Shareable mode always uses ``pseudonymous_stem``: file and folder names are often the patient's
    name or ID (in any spelling, any length), and no check can prove a name is not identifying.
    Clinical mode keeps the input's name. An explicit stem given to ``export`` is the user's.
    """
    stem = default_stem(source if source is not None else volume)
    if deid.check_mode(mode) == deid.SHAREABLE:
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
    unknown = [f for f in formats if f not in ALL_FORMATS]
    if unknown:
        raise ExportError(
            f"unknown export format(s) {', '.join(unknown)}", hint=f"use {', '.join(ALL_FORMATS)}"
        )
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
    if stem:
        stem = _clean(stem)
        if (
            mode == deid.SHAREABLE
            and not PSEUDONYM.fullmatch(stem)
            and reveals_identifiers(stem, volume.metadata)
        ):
            raise ExportError(
                f"the file name stem {stem!r} holds a part of the patient's name or IDs, and this is a "
                "shareable export",
                path=out_dir,
                hint="choose a stem without identifiers (or none: a pseudonym is used), or export in "
                "clinical mode",
            )
    else:
        stem = derived_stem(None, volume, mode)
    paths = output_paths(out_dir, stem, formats, maps)
    preflight(out_dir, stem, paths.values(), overwrite=overwrite)

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
    return write_set(
        out_dir,
        stem,
        {k: (p, rendered[k]) for k, p in paths.items()},
        report_id=rendered["doc"]["report_id"],
        overwrite=overwrite,
    )


# --- one scan's files as a set ---------------------------------------------------------------------

SET_SUFFIX = ".hyperct.set"
_PLACE_ORDER = ("saliency:", "sr", "pdf", "fhir", "json")  # the JSON last: a JSON file means a complete set


def set_record_path(out_dir: str | os.PathLike[str], stem: str) -> Path:
    return Path(out_dir) / f".{stem}{SET_SUFFIX}"


def stem_file_names(stem: str) -> list[str]:
    """Every file name an export of ``stem`` can write (each format and each finding's map)."""
    from hyperct.findings import catalogue
    from hyperct.report.maps import map_file_name

    return [f"{stem}{SUFFIXES[f]}" for f in ALL_FORMATS] + [
        map_file_name(stem, fid) for fid in catalogue().ids
    ]


def _stem_of(name: str) -> str | None:
    """The stem of an export file name (``x.hyperct.pdf`` -> ``x``; the set record ``.x.hyperct.set``
    too), None for other names."""
    if name.startswith(".") and name.endswith(SET_SUFFIX) and len(name) > len(SET_SUFFIX) + 1:
        return name[1 : -len(SET_SUFFIX)]
    for suffix in SUFFIXES.values():
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    m = re.fullmatch(r"(.+)\.saliency\.[a-z0-9_]+\.nii\.gz", name)
    return m.group(1) if m else None


def read_set_record(out_dir: str | os.PathLike[str], stem: str) -> dict | None:
    """The set record of ``stem`` ({"report_id", "files", "complete"}), None if absent or unreadable."""
    try:
        rec = json.loads(set_record_path(out_dir, stem).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("files"), list):
        return None
    rec["files"] = [str(n) for n in rec["files"] if isinstance(n, str) and "/" not in n and "\\" not in n]
    return rec


def _incomplete_leftovers(out_dir: Path, stem: str) -> set[str]:
    """Names of files left by a killed export of ``stem`` (its record says incomplete)."""
    rec = read_set_record(out_dir, stem)
    if rec is None or rec.get("complete", True):
        return set()
    allowed = set(stem_file_names(stem))
    return {n for n in rec["files"] if n in allowed and (out_dir / n).exists()}


def preflight(out_dir, stem: str, paths, *, overwrite: bool) -> None:
    """Refuse (``ExportError``) targets that exist, except files of an incomplete earlier set."""
    leftovers = _incomplete_leftovers(Path(out_dir), stem)
    check_targets([p for p in paths if Path(p).name not in leftovers], overwrite=overwrite)
    check_targets([p for p in paths if Path(p).name in leftovers], overwrite=True)


def clean_stale_temps(out_dir: str | os.PathLike[str], stem: str | None = None) -> list[Path]:
    """Remove temporary files that killed exports left in ``out_dir``; return what was removed.

    Those of ``stem`` are removed outright (call this holding its lock); those of other stems only
    when their lock is free (no export of that stem is running).
    """
    out = Path(out_dir)
    removed: list[Path] = []
    try:
        names = [e.name for e in os.scandir(out) if e.name.startswith(".") and e.name.endswith(".tmp")]
    except OSError:
        return removed
    by_stem: dict[str, list[str]] = {}
    for n in names:
        m = TEMP_NAME.fullmatch(n)
        s = _stem_of(m.group("name")) if m else None
        if s is not None and temp_pattern(m.group("name")).fullmatch(n):
            by_stem.setdefault(s, []).append(n)
    for s, temps in by_stem.items():
        if s == stem:
            removed += _unlink_all(out, temps)
            continue
        try:
            with stem_lock(out, s, wait_s=0):
                removed += _unlink_all(out, temps)
        except ExportError:
            continue  # being written right now
    return removed


def _unlink_all(folder: Path, names) -> list[Path]:
    gone = []
    for n in names:
        try:
            os.unlink(folder / n)
            gone.append(folder / n)
        except FileNotFoundError:
            pass
        except OSError:
            pass
    return gone


def _write_record(out_dir: Path, stem: str, report_id: str, files: list[str], complete: bool) -> None:
    rec = {"report_id": report_id, "files": sorted(files), "complete": complete}
    write_atomic(set_record_path(out_dir, stem), json.dumps(rec, indent=1) + "\n", overwrite=True)


def write_set(
    out_dir: str | os.PathLike[str],
    stem: str,
    files: dict[str, tuple[Path, bytes | str]],
    *,
    report_id: str,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write one scan's files (``{key: (path, data)}``) as a set; return ``{key: path}``.

    See the module docstring for the steps. On a failure while files are moved into place, the
    ``ExportError`` raised has ``written`` (``{key: path}`` of those in place).
    """
    out = Path(out_dir)
    order = sorted(files, key=lambda k: next(n for n, p in enumerate(_PLACE_ORDER) if k.startswith(p)))
    with stem_lock(out, stem):
        clean_stale_temps(out, stem)
        leftovers = _incomplete_leftovers(out, stem)
        targets = {files[k][0].name for k in order}
        check_targets([files[k][0] for k in order if files[k][0].name not in leftovers], overwrite=overwrite)
        rec = read_set_record(out, stem)
        keep: list[str] = []  # files of the same report already there (e.g. the viewer's other button)
        others: list[str] = []  # files of another report that this set would leave beside its own
        if rec is not None and rec.get("complete", True):
            there = [n for n in rec["files"] if n not in targets and (out / n).exists()]
            if rec.get("report_id") == report_id:
                keep = there
            else:
                others = there
        if others and not overwrite:
            raise OutputExistsError(
                f"the folder holds files of another report of this scan ({', '.join(others)}), which this "
                "export would leave beside its own",
                path=out / others[0],
                hint="pass --overwrite (overwrite=True) to replace that report's files, or choose another "
                "--out folder",
            )
        staged: dict[str, str] = {}
        try:
            for k in order:
                staged[k] = stage(files[k][0], files[k][1])
        except BaseException:
            for tmp in staged.values():
                _unlink_all(out, [Path(tmp).name])
            raise
        _write_record(out, stem, report_id, sorted(targets | set(keep)), complete=False)
        written: dict[str, Path] = {}
        for n, k in enumerate(order):
            path = files[k][0]
            try:
                place(staged.pop(k), path, overwrite=overwrite or path.name in leftovers)
            except BaseException as exc:
                for tmp in staged.values():
                    _unlink_all(out, [Path(tmp).name])
                if isinstance(exc, ExportError):
                    done = ", ".join(p.name for p in written.values()) or "none"
                    left = ", ".join(files[x][0].name for x in order[n:])
                    kind = OutputExistsError if isinstance(exc, OutputExistsError) else ExportError
                    err = kind(
                        f"{exc.cause}; the set is incomplete: written {done}; not written {left}",
                        path=path,
                        hint="fix the cause and export again: the incomplete set is replaced without --overwrite",
                    )
                    err.written = dict(written)
                    raise err from exc
                raise
            written[k] = path
        _unlink_all(out, [n for n in (others + sorted(leftovers - targets))])
        _write_record(out, stem, report_id, sorted(targets | set(keep)), complete=True)
    return {k: written[k] for k in files}


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
    """The report in memory: ``{"doc": dict, "json": str, "pdf": bytes, "sr": bytes, "fhir": str}``
    (the asked formats)."""
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
    if "fhir" in formats:
        from hyperct.report.fhir import bundle_json

        out["fhir"] = bundle_json(doc)
    return out
