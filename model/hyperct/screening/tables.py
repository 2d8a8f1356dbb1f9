"""The tables of ``hyperct screen``: results (one row per study), index (one row per series), summary.

Written atomically (temporary file in the same folder, fsync, ``os.replace``) as Parquet (pyarrow)
and CSV with the same columns. Column sets depend on the export mode: shareable tables carry link
IDs (``hyperct.report.deid``) instead of patient IDs and names, and no paths or series descriptions.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hyperct.atomic import replace_file
from hyperct.findings import catalogue
from hyperct.report import deid
from hyperct.results import HIGH_SPECIFICITY_NOTE

RESULTS_STEM, INDEX_STEM, SUMMARY_STEM = "results", "index", "summary"


def identity_columns(mode: str) -> list[str]:
    if mode == deid.CLINICAL:
        return ["patient_id", "patient_name", "accession_number", "study_date", "source"]
    return ["patient_link_id", "accession_link_id", "study_date"]


def result_columns(mode: str) -> list[tuple[str, str]]:
    """(name, type) of the results table; type: str, float, int, bool."""
    cols: list[tuple[str, str]] = [("study", "str"), ("series_uid", "str"), ("status", "str")]
    cols += [(c, "str") for c in identity_columns(mode)]
    cols += [
        ("error_code", "str"),
        ("error", "str"),
        ("qc_codes", "str"),
        ("out_of_scope", "bool"),
        ("n_present", "int"),
        ("present", "str"),
        ("model_name", "str"),
        ("model_version", "str"),
        ("model_sha256", "str"),
        ("device", "str"),
    ]
    for fid in catalogue().ids:
        cols.append((f"p_{fid}", "float"))
    for fid in catalogue().ids:
        cols.append((f"call_{fid}", "str"))
    return cols


def index_columns(mode: str) -> list[tuple[str, str]]:
    cols = [
        ("study", "str"),
        ("study_status", "str"),
        ("study_reason", "str"),
        ("series_uid", "str"),
        ("series_number", "int"),
        ("modality", "str"),
        ("slices", "int"),
        ("slice_thickness_mm", "float"),
        ("chosen", "bool"),
        ("reason", "str"),
        ("duplicate_files", "int"),
    ]
    if mode == deid.CLINICAL:
        cols += [("description", "str"), ("source", "str")]
    return cols


def index_rows(entries, loose: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    rows = []
    clinical = mode == deid.CLINICAL
    for e in entries:
        base = {
            "study": e.study,
            "study_status": e.status,
            "study_reason": e.reason or None,
            "duplicate_files": e.duplicates,
        }
        if clinical:
            base["source"] = e.label
        series = e.series or [{}]
        for s in series:
            row = dict(base)
            row.update(
                series_uid=s.get("series_uid"),
                series_number=s.get("series_number"),
                modality=s.get("modality"),
                slices=s.get("slices"),
                slice_thickness_mm=s.get("slice_thickness_mm"),
                chosen=s.get("chosen"),
                reason=(s.get("reason") if clinical else s.get("category")),
            )
            if clinical:
                row["description"] = s.get("description") or None
            rows.append(row)
    for f in loose:
        row = {"study": None, "study_status": "no study", "study_reason": f["reason"]}
        if clinical:
            row["source"] = f["file"]
        rows.append(row)
    return rows


def _arrow_type(kind: str):
    import pyarrow as pa

    return {"str": pa.string(), "float": pa.float64(), "int": pa.int64(), "bool": pa.bool_()}[kind]


def write_table(
    rows: list[dict[str, Any]], columns: list[tuple[str, str]], folder: Path, stem: str
) -> list[Path]:
    """``<stem>.parquet`` and ``<stem>.csv`` with exactly ``columns`` (missing values: null / empty)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = [c for c, _ in columns]
    schema = pa.schema([(c, _arrow_type(t)) for c, t in columns])
    data = {c: [r.get(c) for r in rows] for c in names}
    table = pa.Table.from_pydict(data, schema=schema)
    pq_path, csv_path = folder / f"{stem}.parquet", folder / f"{stem}.csv"
    replace_file(pq_path, lambda f: pq.write_table(table, f))
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(names)
    for r in rows:
        w.writerow(
            ["" if r.get(c) is None else (repr(r[c]) if isinstance(r[c], float) else r[c]) for c in names]
        )
    replace_file(csv_path, text.getvalue())
    return [pq_path, csv_path]


def read_table(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


# --- summary ---------------------------------------------------------------------------------------


def summarise(
    rows: list[dict[str, Any]],
    entries,
    loose,
    *,
    not_done: int,
    stats: dict[str, Any],
    high_specificity: Sequence[str] = (),
) -> dict:
    """The run's summary; ``high_specificity``: the findings whose threshold the model's manifest set
    for high specificity (``Manifest.high_specificity_findings``), marked in the table."""
    cat = catalogue()
    scored = [r for r in rows if r["status"] == "scored"]
    failed = [r for r in rows if r["status"] == "failed"]
    findings = {}
    for fid in cat.ids:
        calls = Counter(r.get(f"call_{fid}") for r in scored)
        findings[fid] = {
            "present": calls.get("present", 0),
            "absent": calls.get("absent", 0),
            "not_assessed": len(scored) - calls.get("present", 0) - calls.get("absent", 0),
            "high_specificity_threshold": fid in high_specificity,
        }
    qc = Counter(code for r in rows for code in (r.get("qc_codes") or "").split(";") if code)
    skipped = Counter(e.reason.split(":")[0] for e in entries if e.status == "skipped")
    model = next(({k: r[k] for k in ("model_name", "model_version", "model_sha256")} for r in scored), None)
    return {
        "studies_in_index": len(entries),
        "studies_to_score": sum(1 for e in entries if e.status == "score"),
        "studies_skipped": sum(1 for e in entries if e.status == "skipped"),
        "files_outside_studies": len(loose),
        "scored": len(scored),
        "failed": len(failed),
        "not_done": int(not_done),
        "findings": findings,
        "failures_by_reason": dict(sorted(Counter(r.get("error_code") or "?" for r in failed).items())),
        "qc_warnings_by_code": dict(sorted(qc.items())),
        "skipped_by_reason": dict(sorted(skipped.items())),
        "model": model,
        "run": stats,
        "disclaimer": "AI output, not a diagnosis.",
    }


def summary_text(s: dict) -> str:
    lines = [
        f"studies: {s['studies_in_index']} in the index, {s['studies_to_score']} with a CT series to score, "
        f"{s['studies_skipped']} skipped (no CT series to score)",
        f"scored: {s['scored']}; failed: {s['failed']}; not done yet: {s['not_done']}"
        + (" (run the same command again to continue)" if s["not_done"] else ""),
    ]
    if s.get("model"):
        m = s["model"]
        lines.append(f"model: {m['model_name']} v{m['model_version']} (sha256 {m['model_sha256'][:16]}...)")
    lines.append(f"{'finding':<34} {'present':>8} {'absent':>8} {'not assessed':>13}")
    cat = catalogue()
    for fid, c in s["findings"].items():
        name = cat[fid].name[:32] + " *" if c.get("high_specificity_threshold") else cat[fid].name[:34]
        lines.append(f"{name:<34} {c['present']:>8} {c['absent']:>8} {c['not_assessed']:>13}")
    if any(c.get("high_specificity_threshold") for c in s["findings"].values()):
        lines.append(f"* {HIGH_SPECIFICITY_NOTE}")
    if s["failures_by_reason"]:
        lines.append(
            "failed studies by reason: " + ", ".join(f"{k} {v}" for k, v in s["failures_by_reason"].items())
        )
    if s["qc_warnings_by_code"]:
        lines.append(
            "QC warnings by code: " + ", ".join(f"{k} {v}" for k, v in s["qc_warnings_by_code"].items())
        )
    if s["skipped_by_reason"]:
        lines.append("skipped studies: " + ", ".join(f"{k} {v}" for k, v in s["skipped_by_reason"].items()))
    run = s.get("run") or {}
    if run.get("rate_per_hour"):
        lines.append(
            f"this run: {run.get('scored_now', 0)} studies in {run['seconds']:.1f} s ({run['rate_per_hour']:.0f}/h)"
        )
    lines.append(s["disclaimer"])
    return "\n".join(lines)


def write_summary(summary: dict, folder: Path) -> list[Path]:
    j, t = folder / f"{SUMMARY_STEM}.json", folder / f"{SUMMARY_STEM}.txt"
    replace_file(j, json.dumps(summary, indent=2))
    replace_file(t, summary_text(summary) + "\n")
    return [j, t]
