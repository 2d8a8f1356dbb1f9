"""Which series of an input to score: one per study, chosen by stated rules (``hyperct predict``).

Built on the reader's header scan (``hyperct.io.list_series``: headers only, no pixel data). An
input may hold several studies and several series per study; ``plan_input`` returns one
``SeriesChoice`` per study (or per usable series with ``all_series=True``) and, for each, the
series it did not use and why.

Rules (``SELECTION_RULES``), applied per study (StudyInstanceUID; series without one form a study
of their own):

1. CT image series only: localizers/scouts, non-CT modalities, secondary captures and non-image
   objects (SR, presentation states, ...) are skipped;
2. the series must read as one regular volume with at least ``min_slices`` slices (the reader's
   checks: complete geometry, no gaps, one orientation and matrix size);
3. axial acquisitions only (coronal/sagittal reformats are skipped; ``all_series`` keeps them);
4. thinnest slices within the chest range: a slice thickness up to ``CHEST_MAX_THICKNESS_MM``
   (the model's thin-slice range) ranks first, thinner first; thicker series only when nothing
   else is usable;
5. most slices; then the lowest SeriesNumber, then the SeriesInstanceUID.

``series_uid`` scores that series only; ``all_series`` scores every usable CT series.
A study that holds CT image series but none usable is a failure of that study (the reader's own
error says why); a study without CT images (MR, only localizers, only SR) is listed as skipped.

Skipped series are described twice: ``reason`` (the reader's full words, for the console and
clinical exports) and ``category`` (built only from the project's own vocabulary, numbers and
DICOM codes, for shareable exports: no descriptions, names or paths).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hyperct.io import list_series
from hyperct.io.dicom_series import SeriesInfo

CHEST_MAX_THICKNESS_MM = 5.0
SELECTION_RULES = (
    "CT image series only (no localizer/scout, non-CT or non-image series)",
    "readable as one regular volume with enough slices",
    "axial acquisition",
    f"thinnest slices within the chest range (slice thickness up to {CHEST_MAX_THICKNESS_MM:g} mm first)",
    "most slices",
    "then lowest SeriesNumber",
)
RULE_TEXT = "one series per study: " + "; ".join(SELECTION_RULES)
REQUESTED_TEXT = "the series requested by SeriesInstanceUID (--series)"
ALL_SERIES_TEXT = "every usable CT series (--all-series)"

# Reader reasons (dicom_series) -> words safe for shareable exports. Matched by prefix.
_CATEGORIES = (
    ("not CT (secondary capture)", "not CT (secondary capture)"),
    ("not CT (colour images)", "not CT (colour images)"),
    ("not CT", "not CT"),
    ("localizer", "localizer/scout"),
    ("non-image (DICOMDIR", "DICOMDIR index"),
    ("non-image", "non-image object"),
    ("corrupt header", "unreadable header values"),
    ("missing ImagePositionPatient", "missing geometry tags"),
    ("missing ImageOrientationPatient", "missing geometry tags"),
    ("missing PixelSpacing", "missing geometry tags"),
    ("mixed orientation", "mixed orientations"),
    ("mixed matrix size", "mixed matrix sizes"),
    ("mixed pixel spacing", "mixed pixel spacing"),
    ("too few slices", "too few slices"),
    ("geometry", "irregular slice geometry (gap, duplicate slices or tilt)"),
)


def reason_category(reason: str) -> str:
    """The reader's reason for skipping a series in the project's own words (no free text)."""
    for prefix, words in _CATEGORIES:
        if reason.startswith(prefix):
            if words == "too few slices":
                digits = reason[len(prefix) :].strip()
                if digits and all(c.isdigit() or c in " ()<" for c in digits):
                    return f"too few slices {digits}"
            return words
    return "not usable as a volume"


@dataclass
class SkippedSeries:
    """A series in the input that a report does not use, and why."""

    uid: str
    study_uid: str
    series_number: int | None
    modality: str
    n_slices: int
    slice_thickness: float | None
    orientation: str
    description: str  # console and clinical only
    reason: str  # full reason (console, clinical exports)
    category: str  # project vocabulary only (shareable exports)

    def label(self) -> str:
        parts = ["series"]
        if self.series_number is not None:
            parts.append(str(self.series_number))
        if self.description:
            parts.append(f"'{self.description}'")
        parts.append(f"({self.uid or 'no SeriesInstanceUID'})")
        return " ".join(parts)

    def to_dict(self, *, shareable: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "StudyInstanceUID": self.study_uid or None,
            "SeriesInstanceUID": self.uid or None,
            "SeriesNumber": self.series_number,
            "modality": self.modality or None,
            "slices": int(self.n_slices),
            "slice_thickness_mm": self.slice_thickness,
            "reason": self.category if shareable else self.reason,
        }
        return out


@dataclass
class SeriesChoice:
    """One report to make: the series to read (None: what the reader picks) and what was skipped."""

    series_uid: str | None
    study_uid: str
    info: SeriesInfo | None
    rule: str
    skipped: list[SkippedSeries] = field(default_factory=list)
    pass_uid: bool = True  # give series_uid to read_ct (False: the reader's own pick is this series)

    def describe(self) -> str:
        if self.info is None:
            return "the input"
        i = self.info
        num = f"series {i.series_number}" if i.series_number is not None else "series"
        th = f", {i.slice_thickness:g} mm" if i.slice_thickness else ""
        return f"{num} ({i.uid or 'no SeriesInstanceUID'}; {i.n_slices} slices{th})"

    def selection_block(self, *, shareable: bool) -> dict[str, Any]:
        """The report's ``input.series_selection`` entry."""
        return {
            "rule": self.rule,
            "skipped": [s.to_dict(shareable=shareable) for s in self.skipped],
        }


@dataclass
class Plan:
    """What ``hyperct predict`` does with one input."""

    choices: list[SeriesChoice]
    skipped: list[SkippedSeries]  # every series of the input not scored, with the reason
    n_studies: int = 1


def _thickness(i: SeriesInfo) -> float:
    if i.slice_thickness:
        return float(i.slice_thickness)
    if i.slice_spacing:
        return float(i.slice_spacing)
    return 1e9


def _in_range(i: SeriesInfo) -> bool:
    return _thickness(i) <= CHEST_MAX_THICKNESS_MM + 1e-6


def rank_key(i: SeriesInfo) -> tuple:
    """Sort key of the rules 4-5 (smaller ranks first)."""
    return (
        0 if _in_range(i) else 1,
        round(_thickness(i), 2),
        -int(i.n_slices),
        i.series_number if i.series_number is not None else 1 << 30,
        i.uid,
    )


def _mm(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def _why_not(other: SeriesInfo, chosen: SeriesInfo) -> str:
    """Why a usable series ranks after the chosen one (project vocabulary and numbers only)."""
    if other.orientation and other.orientation != "axial":
        return f"not axial ({other.orientation})"
    num = f"series {chosen.series_number}" if chosen.series_number is not None else "the chosen series"
    to, tc = _thickness(other), _thickness(chosen)
    if _in_range(chosen) and not _in_range(other):
        return f"slices thicker than {CHEST_MAX_THICKNESS_MM:g} mm ({_mm(to)} mm)"
    if round(to, 2) > round(tc, 2):
        return f"thicker slices than {num} ({_mm(to)} mm vs {_mm(tc)} mm)"
    if other.n_slices < chosen.n_slices:
        return f"fewer slices than {num} ({other.n_slices} vs {chosen.n_slices})"
    return f"ranks after {num} (same thickness and slice count; lower SeriesNumber first)"


def _skipped(i: SeriesInfo, reason: str, category: str | None = None) -> SkippedSeries:
    return SkippedSeries(
        uid=i.uid,
        study_uid=i.study_uid,
        series_number=i.series_number,
        modality=i.modality,
        n_slices=int(i.n_slices),
        slice_thickness=float(i.slice_thickness) if i.slice_thickness else None,
        orientation=i.orientation,
        description=i.description,
        reason=reason,
        category=category if category is not None else reason_category(reason),
    )


def _reader_reason(i: SeriesInfo) -> str:
    return i.reason or "not usable"


def _is_candidate_volume(i: SeriesInfo) -> bool:
    """A CT image series that is not a localizer: one a user would expect to be scored."""
    if i.modality != "CT" or i.usable:
        return False
    r = i.reason or ""
    return not (r.startswith("localizer") or r.startswith("non-image") or r.startswith("not CT"))


def plan_input(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    min_slices: int = 16,
    resample_tilt: bool = False,
    series_uid: str | None = None,
    all_series: bool = False,
) -> Plan:
    """The reports to make for ``source`` (see the module docstring). Raises the reader's
    ``InputError`` only for inputs that cannot be listed at all (missing path, not an image file)."""
    infos = list_series(source, min_slices=min_slices, resample_tilt=resample_tilt)
    single_file = (
        len(infos) == 1
        and not infos[0].uid
        and infos[0].n_slices == 0
        and infos[0].reason.endswith(" file")
        and not infos[0].modality
    )
    if single_file:  # NIfTI/NRRD/MHA: one volume, nothing to choose
        return Plan([SeriesChoice(None, "", None, "the input file", pass_uid=False)], [])

    if series_uid is not None:
        chosen = [i for i in infos if i.uid == series_uid]
        others = [
            _skipped(i, "not requested (--series)", "not requested (--series)")
            if i.usable
            else _skipped(i, _reader_reason(i))
            for i in infos
            if i.uid != series_uid
        ]
        study = chosen[0].study_uid if chosen else ""
        info = chosen[0] if chosen else None
        return Plan([SeriesChoice(series_uid, study, info, REQUESTED_TEXT, others)], others)

    studies: dict[str, list[SeriesInfo]] = {}
    for i in infos:
        studies.setdefault(i.study_uid, []).append(i)
    # series whose study is unknown (non-image objects carry no StudyInstanceUID here): every report lists them
    unknown = [i for i in studies.get("", []) if not i.n_slices and not i.usable]
    choices: list[SeriesChoice] = []
    skipped_all: list[SkippedSeries] = []
    reader_pick = next((i for i in infos if i.selected), None)
    for study_uid, members in studies.items():
        usable = [i for i in members if i.usable]
        eligible = usable if all_series else [i for i in usable if (i.orientation or "axial") == "axial"]
        eligible = sorted(eligible, key=rank_key)
        skipped: list[SkippedSeries] = []
        if all_series:
            picks = eligible
        else:
            picks = eligible[:1]
            for i in usable:
                if i not in picks:
                    why = _why_not(i, picks[0]) if picks else f"not axial ({i.orientation})"
                    skipped.append(_skipped(i, why, why))
        for i in members:
            if not i.usable and not (study_uid == "" and i in unknown):
                skipped.append(_skipped(i, _reader_reason(i)))
        if not picks:
            broken = sorted((i for i in members if _is_candidate_volume(i)), key=lambda i: -i.n_slices)
            if broken:
                # a CT volume the user expects to be scored, but unreadable: the reader says why
                b = broken[0]
                skipped = [s for s in skipped if s.uid != b.uid]
                choices.append(SeriesChoice(b.uid, study_uid, b, RULE_TEXT, skipped))
            skipped_all += skipped
            continue
        for p in picks:
            rule = ALL_SERIES_TEXT if all_series else RULE_TEXT
            choices.append(SeriesChoice(p.uid, study_uid, p, rule, list(skipped)))
        skipped_all += skipped
    unknown_skips = [_skipped(i, _reader_reason(i)) for i in unknown]
    skipped_all += unknown_skips
    for c in choices:
        c.skipped = c.skipped + unknown_skips
    if not choices:
        # nothing usable anywhere: let the reader raise its most useful error
        return Plan([SeriesChoice(None, "", None, RULE_TEXT, list(skipped_all), pass_uid=False)], skipped_all)
    n_studies = len({c.study_uid for c in choices})
    if len(choices) == 1 and reader_pick is not None and choices[0].info is reader_pick:
        choices[0].pass_uid = False  # the reader's pick: read as before (keeps its skipped-series warning)
    choices.sort(key=lambda c: (c.study_uid, rank_key(c.info) if c.info else ()))
    return Plan(choices, skipped_all, n_studies)
