"""The index pass of ``hyperct screen``: files -> studies -> the series to score, from headers only.

1. Every file under the archive (any depth, any name; a DICOMDIR is followed, as by the reader) is
   classified from a few header tags (``light_header``: no pixel data): a DICOM object with its
   Study/Series/SOP Instance UIDs, a NIfTI/NRRD/MHA file (one study of its own), a DICOM file that
   cannot be parsed, or something else.
2. DICOM files are grouped into studies by StudyInstanceUID (files without one: one study per
   folder). A second copy of an instance (same SOPInstanceUID, e.g. a study exported twice) is
   left out and counted. Unreadable and non-DICOM files go with the studies that have images in the
   same folder, so the reader's rules for damaged slices apply exactly as for ``hyperct predict``
   on that folder.
3. Non-contrast first: when the header says a CT series was contrast-enhanced (ContrastBolusAgent
   set, and not 'none') and the study has a non-contrast CT series with enough slices, the
   contrast series is skipped (``CONTRAST_RULE``). If the non-contrast series turns out unusable,
   the study is planned again with every series.
4. Each study is planned by ``hyperct.io.selection.plan_input`` (the rules ``hyperct predict``
   states: CT, axial, non-localizer, thinnest within the chest range, most slices...).

Every step is deterministic (sorted paths, sorted study keys), so several ranks of a ``torchrun``
job build the same index, each doing a share of the header reads (``shard``/``gather``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hyperct.io.dicom_scan import (
    DICOMDIR_SOP_CLASS,
    collect_files,
    looks_like_dicom,
    open_regular,
)
from hyperct.io.dicom_series import VOLUME_SUFFIXES
from hyperct.io.selection import reason_category

CONTRAST_RULE = "non-contrast series first where the header says so (ContrastBolusAgent)"
CONTRAST_REASON = "contrast-enhanced (ContrastBolusAgent in the header); a non-contrast series is scored"
NO_CONTRAST_WORDS = {"", "NONE", "NO", "N", "NIL", "WITHOUT", "NO CONTRAST", "NON-CONTRAST", "0"}
_LIGHT_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "ImageType",
    "ContrastBolusAgent",
    "PatientID",
    "PatientName",
    "AccessionNumber",
    "StudyDate",
]
IDENTITY_KEYS = ("PatientID", "PatientName", "AccessionNumber", "StudyDate")


@dataclass
class StudyEntry:
    """One study of the archive and what the screen does with it (JSON-serialisable)."""

    key: str  # stable, unique: "dicom:<StudyInstanceUID>", "folder:<hash>", "file:<hash>", "id:<id>"
    study: str  # the study column of the tables: StudyInstanceUID, or a pseudonym for file inputs
    kind: str  # "dicom" or "file"
    label: str  # a path for the console (never in shareable tables)
    files: list[str] = field(default_factory=list)
    status: str = "score"  # "score" or "skipped"
    reason: str = ""  # why skipped (project words)
    series_uid: str | None = None
    pass_uid: bool = True
    rule: str = ""
    series: list[dict[str, Any]] = field(default_factory=list)  # index rows
    identity: dict[str, str] = field(
        default_factory=dict
    )  # PatientID, PatientName, AccessionNumber, StudyDate
    duplicates: int = 0  # second copies of instances left out
    requested_series: str | None = None  # manifest series_uid
    out_id: str | None = None  # manifest id

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StudyEntry:
        return cls(**d)


# --- step 1: light headers ---------------------------------------------------------------------


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def image_file_format(path: str) -> bool:
    low = path.lower()
    return low.endswith(VOLUME_SUFFIXES)


def light_header(path: str) -> dict[str, Any]:
    """A few tags of one file (no pixel data): ``kind`` is dicom, image, dicomdir, unreadable or other."""
    if image_file_format(path):
        return {"path": path, "kind": "image"}
    is_dicom, force = looks_like_dicom(path)
    if not is_dicom:
        return {"path": path, "kind": "other"}
    import pydicom

    try:
        with open_regular(path) as fp:
            ds = pydicom.dcmread(fp, stop_before_pixels=True, force=force, specific_tags=_LIGHT_TAGS)
        meta = ds.get("file_meta", {})
        sop_class = _text(ds.get("SOPClassUID")) or _text(meta.get("MediaStorageSOPClassUID"))
        out = {
            "path": path,
            "kind": "dicom",
            "sop_class": sop_class,
            "sop": _text(ds.get("SOPInstanceUID")) or _text(meta.get("MediaStorageSOPInstanceUID")),
            "study": _text(ds.get("StudyInstanceUID")),
            "series": _text(ds.get("SeriesInstanceUID")),
            "modality": _text(ds.get("Modality")).upper(),
            "image_type": _text(ds.get("ImageType")).upper(),
            "contrast": _text(ds.get("ContrastBolusAgent")),
        }
        for k in IDENTITY_KEYS:
            out[k] = _text(ds.get(k))
    except Exception as exc:  # noqa: BLE001 - any parse failure: an unreadable DICOM file
        if force:
            return {"path": path, "kind": "other"}
        return {"path": path, "kind": "unreadable", "reason": f"{type(exc).__name__}: {exc}"}
    if sop_class == DICOMDIR_SOP_CLASS:
        out["kind"] = "dicomdir"
    return out


def _light_chunk(paths: list[str]) -> list[dict[str, Any]]:
    return [light_header(p) for p in paths]


def _pool_map(fn: Callable, chunks: list, workers: int) -> list:
    if workers <= 0 or len(chunks) <= 1:
        return [fn(c) for c in chunks]
    import multiprocessing as mp

    # spawn: the parent may hold a model and OpenMP threads; a fresh interpreter is safe everywhere
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(fn, chunks))


def _chunks(items: list, n: int) -> list[list]:
    size = max(1, -(-len(items) // max(1, n)))
    return [items[i : i + size] for i in range(0, len(items), size)]


def light_headers(paths: Sequence[str], *, workers: int = 0) -> list[dict[str, Any]]:
    chunks = _chunks(list(paths), max(1, workers) * 4)
    out: list[dict[str, Any]] = []
    for part in _pool_map(_light_chunk, chunks, workers):
        out.extend(part)
    return out


# --- step 2: grouping ---------------------------------------------------------------------------


def _hash(text: str, n: int = 16) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def _rel(path: str, root: str) -> str:
    try:
        return os.path.relpath(path, root)
    except ValueError:
        return path


def _has_contrast(agent: str) -> bool:
    return agent.strip().upper() not in NO_CONTRAST_WORDS


@dataclass
class _Group:
    key: str
    study: str
    kind: str
    label: str
    images: list[dict[str, Any]] = field(default_factory=list)
    extras: list[str] = field(default_factory=list)
    duplicates: int = 0


def group_studies(headers: list[dict[str, Any]], root: str) -> tuple[list[_Group], list[dict[str, Any]]]:
    """Studies (sorted by key) and the index rows of files that belong to no study."""
    headers = sorted(headers, key=lambda h: h["path"])
    groups: dict[str, _Group] = {}
    loose: list[dict[str, Any]] = []
    dicom = [h for h in headers if h["kind"] == "dicom"]
    with_study = {os.path.dirname(h["path"]) for h in dicom if h["study"]}
    for h in headers:
        if h["kind"] == "image":
            rel = _rel(h["path"], root)
            key = f"file:{_hash(rel)}"
            groups[key] = _Group(key, f"file-{_hash(rel, 12)}", "file", h["path"], [h])
    seen_sop: dict[tuple[str, str], str] = {}
    extras_by_folder: dict[str, list[str]] = {}
    for h in dicom:
        folder = os.path.dirname(h["path"])
        if not h["study"] and folder in with_study:
            extras_by_folder.setdefault(folder, []).append(
                h["path"]
            )  # a study-less object among a study's files
            continue
        if h["study"]:
            key, study, label = f"dicom:{h['study']}", h["study"], folder
        else:
            rel = _rel(folder, root)
            key, study, label = f"folder:{_hash(rel)}", f"folder-{_hash(rel, 12)}", folder
        g = groups.setdefault(key, _Group(key, study, "dicom", label))
        sop = h.get("sop") or ""
        if sop and (key, sop) in seen_sop:
            g.duplicates += 1
            continue
        if sop:
            seen_sop[(key, sop)] = h["path"]
        g.images.append(h)
    for h in headers:
        if h["kind"] in ("unreadable", "other"):
            extras_by_folder.setdefault(os.path.dirname(h["path"]), []).append(h["path"])
        elif h["kind"] == "dicomdir":
            loose.append({"file": h["path"], "reason": "DICOMDIR index (its files are indexed)"})
    folders_of: dict[str, set[str]] = {}
    for g in groups.values():
        if g.kind == "dicom":
            for h in g.images:
                folders_of.setdefault(os.path.dirname(h["path"]), set()).add(g.key)
    for folder, paths in extras_by_folder.items():
        owners = folders_of.get(folder)
        if owners:
            for key in owners:
                groups[key].extras.extend(paths)
            continue
        for p in paths:
            kind = next((h["kind"] for h in headers if h["path"] == p), "other")
            if kind == "unreadable":
                loose.append({"file": p, "reason": "not readable as DICOM (no study to attach it to)"})
    for g in groups.values():
        if g.images and g.kind == "dicom":
            g.label = os.path.commonpath([os.path.dirname(h["path"]) for h in g.images])
    return [groups[k] for k in sorted(groups)], loose


# --- step 3-4: planning --------------------------------------------------------------------------


def _identity(images: list[dict[str, Any]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k in IDENTITY_KEYS:
        for h in images:
            if h.get(k):
                out[k] = h[k]
                break
    return out


def _contrast_series(g: _Group, min_slices: int) -> set[str]:
    """Contrast series to leave out: only when a non-contrast CT series with enough files exists."""
    by_series: dict[str, list[dict[str, Any]]] = {}
    for h in g.images:
        if h["modality"] == "CT" and not any(
            w in h["image_type"] for w in ("LOCALIZER", "SCOUT", "TOPOGRAM", "SURVIEW")
        ):
            by_series.setdefault(h["series"], []).append(h)
    contrast = {s for s, hs in by_series.items() if any(_has_contrast(h["contrast"]) for h in hs)}
    plain = [s for s, hs in by_series.items() if s not in contrast and len(hs) >= min_slices]
    return contrast if (contrast and plain) else set()


def _series_rows(plan, chosen_uid: str | None, extra_skips: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    if plan.choices and plan.choices[0].info is not None:
        c = plan.choices[0]
        i = c.info
        rows.append(
            {
                "series_uid": i.uid,
                "series_number": i.series_number,
                "modality": i.modality,
                "slices": int(i.n_slices),
                "slice_thickness_mm": float(i.slice_thickness) if i.slice_thickness else None,
                "description": i.description,
                "chosen": True,
                "reason": c.rule if i.usable else (i.reason or "not usable"),
                "category": "chosen"
                if i.usable
                else f"chosen, not readable as a volume: {reason_category(i.reason or '')}",
            }
        )
    for s in list(plan.skipped) + []:
        if chosen_uid and s.uid == chosen_uid:
            continue
        rows.append(
            {
                "series_uid": s.uid,
                "series_number": s.series_number,
                "modality": s.modality,
                "slices": int(s.n_slices),
                "slice_thickness_mm": s.slice_thickness,
                "description": s.description,
                "chosen": False,
                "reason": s.reason,
                "category": s.category,
            }
        )
    rows += extra_skips
    return rows


def plan_study(
    g: _Group, *, min_slices: int, resample_tilt: bool, series_uid: str | None = None
) -> StudyEntry:
    """Choose the series of one study (never raises: a study that cannot be planned is 'skipped')."""
    from hyperct.errors import HyperCTError
    from hyperct.io.selection import plan_input

    entry = StudyEntry(g.key, g.study, g.kind, g.label, duplicates=g.duplicates, identity=_identity(g.images))
    if g.kind == "file":
        entry.files = [g.images[0]["path"]]
        entry.pass_uid = False
        entry.rule = "the input file"
        entry.series = [
            {
                "series_uid": None,
                "series_number": None,
                "modality": None,
                "slices": None,
                "slice_thickness_mm": None,
                "description": "",
                "chosen": True,
                "reason": "the input file",
                "category": "chosen",
            }
        ]
        return entry
    if not g.images:
        entry.status, entry.reason = "skipped", "no DICOM images"
        return entry
    excluded = set() if series_uid else _contrast_series(g, min_slices)
    all_files = [h["path"] for h in g.images] + sorted(set(g.extras))

    def plan_with(skip: set[str]):
        files = [h["path"] for h in g.images if h["series"] not in skip] + sorted(set(g.extras))
        return files, plan_input(
            files, min_slices=min_slices, resample_tilt=resample_tilt, series_uid=series_uid
        )

    try:
        files, plan = plan_with(excluded)
        c = plan.choices[0]
        if excluded and not (c.info is not None and c.info.usable):
            excluded = set()
            files, plan = plan_with(excluded)
    except HyperCTError as exc:
        entry.files = all_files
        entry.status, entry.reason = "skipped", f"cannot be listed ({type(exc).__name__})"
        return entry
    extra = []
    for uid in sorted(excluded):
        hs = [h for h in g.images if h["series"] == uid]
        extra.append(
            {
                "series_uid": uid,
                "series_number": None,
                "modality": "CT",
                "slices": len(hs),
                "slice_thickness_mm": None,
                "description": "",
                "chosen": False,
                "reason": CONTRAST_REASON,
                "category": CONTRAST_REASON,
            }
        )
    entry.files = files
    c = plan.choices[0]
    if len(plan.choices) > 1:  # one StudyInstanceUID was grouped here: plan_input found several (should not)
        c = plan.choices[0]
    if c.info is None:
        cats = sorted({s.category for s in plan.skipped}) or ["no image series"]
        entry.status, entry.reason = "skipped", "no CT image series to score: " + "; ".join(cats)
        entry.series = _series_rows(plan, None, extra)
        return entry
    entry.series_uid = c.series_uid
    entry.pass_uid = bool(c.pass_uid) or series_uid is not None
    entry.rule = c.rule + (f"; {CONTRAST_RULE}" if excluded else "")
    entry.series = _series_rows(plan, c.info.uid, extra)
    return entry


def _plan_chunk(args: tuple[list[dict[str, Any]], int, bool]) -> list[dict[str, Any]]:
    groups, min_slices, resample_tilt = args
    out = []
    for gd in groups:
        req = gd.pop("_series_uid", None)
        out_id = gd.pop("_out_id", None)
        g = _Group(**gd)
        e = plan_study(g, min_slices=min_slices, resample_tilt=resample_tilt, series_uid=req)
        e.requested_series, e.out_id = req, out_id
        out.append(e.to_dict())
    return out


def plan_studies(
    groups: list[_Group | dict[str, Any]], *, min_slices: int, resample_tilt: bool, workers: int = 0
) -> list[StudyEntry]:
    dicts = [asdict(g) if isinstance(g, _Group) else dict(g) for g in groups]
    chunks = [(c, min_slices, resample_tilt) for c in _chunks(dicts, max(1, workers) * 4)]
    out: list[StudyEntry] = []
    for part in _pool_map(_plan_chunk, chunks, workers):
        out += [StudyEntry.from_dict(d) for d in part]
    return out


# --- the whole pass -------------------------------------------------------------------------------


@dataclass
class Source:
    """What to index: an archive path, or manifest rows (path, series_uid, id)."""

    root: str
    rows: list[tuple[str, str | None, str | None]] | None = None  # manifest rows


def list_files(path: str) -> list[str]:
    """Every regular file under ``path`` (folder, DICOMDIR or file), sorted."""
    return sorted(collect_files([Path(path)]))


def index_groups(
    source: Source,
    *,
    workers: int = 0,
    shard: Callable[[list], list] | None = None,
    gather: Callable[[list], list] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Steps 1-2: groups (as dicts with optional ``_series_uid``/``_out_id``) and loose files.

    ``shard(list) -> this rank's part`` and ``gather(part) -> the whole list in order`` split the
    header reads between ranks (default: one process does everything)."""
    shard = shard or (lambda xs: xs)
    gather = gather or (lambda xs: xs)
    units: list[tuple[str, str | None, str | None]] = source.rows or [(source.root, None, None)]
    all_groups: list[dict[str, Any]] = []
    loose_all: list[dict[str, Any]] = []
    for n, (path, series_uid, out_id) in enumerate(units):
        if not os.path.exists(path):
            loose_all.append({"file": path, "reason": "no such file or folder"})
            continue
        files = list_files(path)
        mine = shard(files)
        headers = gather(light_headers(mine, workers=workers))
        root = path if os.path.isdir(path) else os.path.dirname(path)
        groups, loose = group_studies(headers, root)
        loose_all += loose
        for k, g in enumerate(groups):
            d = asdict(g)
            if source.rows is not None:
                tag = out_id or f"row{n + 2}"
                d["key"] = f"id:{tag}" + (f"#{k + 1}" if len(groups) > 1 else "")
                d["_out_id"] = out_id
                d["_series_uid"] = series_uid
            all_groups.append(d)
    # unique keys (the same study listed twice in a manifest, or in two rows)
    seen: dict[str, int] = {}
    for d in all_groups:
        n = seen.get(d["key"], 0)
        seen[d["key"]] = n + 1
        if n:
            d["key"] = f"{d['key']}#{n + 1}"
    all_groups.sort(key=lambda d: d["key"])
    return all_groups, loose_all
