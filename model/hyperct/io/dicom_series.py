"""Grouping slice headers into series, checking each series, and choosing the one to read.

Series = SeriesInstanceUID (never merged). Within a series, localizers are dropped (ImageType
LOCALIZER/SCOUT/..., or a single image in a plane orthogonal to the stack); the rest must be one
stack (one orientation and matrix size) with complete, regular geometry and enough slices. Every
series gets a ``SeriesInfo`` saying whether it is selected, usable or skipped, and why.

Selection rule (``SELECTION_RULE``): among the usable CT series, the one with the most slices; ties
go to the thinnest SliceThickness, then the lowest SeriesNumber, then the SeriesInstanceUID.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hyperct.errors import (
    CorruptFileError,
    InputError,
    NoImageDataError,
    NotCTError,
    SeriesGeometryError,
    SeriesSelectionError,
    TooFewSlicesError,
)
from hyperct.io import geometry
from hyperct.io.dicom_scan import NonImageFile, ScanResult, SliceHeader

# Applied to the usable CT series only (not localizer/non-image, complete regular geometry, enough slices).
SELECTION_RULE = "most slices, then thinnest SliceThickness, then lowest SeriesNumber"
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass
class SeriesInfo:
    """One series found in the input, and what the reader would do with it."""

    uid: str
    description: str = ""
    modality: str = ""
    series_number: int | None = None
    n_slices: int = 0  # usable image slices (localizers removed)
    n_files: int = 0
    slice_thickness: float | None = None
    slice_spacing: float | None = None
    matrix: tuple[int, int] | None = None  # (rows, columns)
    orientation: str = ""
    transfer_syntax: str = ""
    study_uid: str = ""
    status: str = "skipped"  # "selected", "usable" (not chosen) or "skipped"
    reason: str = ""  # why selected / why not
    paths: list[str] = field(default_factory=list, repr=False)

    @property
    def selected(self) -> bool:
        return self.status == "selected"

    @property
    def usable(self) -> bool:
        return self.status in ("selected", "usable")

    def summary(self) -> dict[str, Any]:
        out = {
            "SeriesInstanceUID": self.uid,
            "SeriesNumber": self.series_number,
            "SeriesDescription": self.description,
            "Modality": self.modality,
            "Slices": self.n_slices,
            "SliceThickness": self.slice_thickness,
            "Status": self.status,
            "Reason": self.reason,
        }
        return {k: v for k, v in out.items() if v not in (None, "")}


@dataclass
class Candidate:
    info: SeriesInfo
    slices: list[SliceHeader] = field(default_factory=list)
    geometry: geometry.StackGeometry | None = None
    problem: InputError | None = None
    has_images: bool = True


def series_label(uid: str, description: str = "", number: int | None = None) -> str:
    parts = ["series"]
    if number is not None:
        parts.append(str(number))
    if description:
        parts.append(f"'{description}'")
    parts.append(f"({uid or 'no SeriesInstanceUID'})")
    return " ".join(parts)


def _group_stacks(images: list[SliceHeader]) -> list[list[SliceHeader]]:
    """Split images into stacks of one orientation (within 0.01) and matrix size; largest first."""
    groups: list[list[SliceHeader]] = []
    for h in images:
        for g in groups:
            ref = g[0]
            if (ref.rows, ref.cols) != (h.rows, h.cols) or (ref.iop is None) != (h.iop is None):
                continue
            if h.iop is None or float(np.max(np.abs(ref.iop - h.iop))) <= 1e-2:
                g.append(h)
                break
        else:
            groups.append([h])
    return sorted(groups, key=len, reverse=True)


def _is_orthogonal(a: SliceHeader, b: SliceHeader) -> bool:
    if a.iop is None or b.iop is None:
        return False
    na = np.cross(a.iop[:3], a.iop[3:])
    nb = np.cross(b.iop[:3], b.iop[3:])
    return abs(float(na @ nb)) < 0.2


def _build_candidate(
    uid: str, slices: list[SliceHeader], source: str, *, min_slices: int, resample_tilt: bool
) -> Candidate:
    first = slices[0]
    modality = Counter(h.modality for h in slices).most_common(1)[0][0]
    info = SeriesInfo(
        uid=uid,
        description=first.series_description,
        modality=modality,
        series_number=first.series_number,
        n_files=len({h.path for h in slices}),
        transfer_syntax=first.transfer_syntax,
        study_uid=str(first.meta.get("StudyInstanceUID", "")),
        paths=sorted({h.path for h in slices}),
    )
    label = series_label(uid, info.description, info.series_number)
    cand = Candidate(info)

    def fail(exc: InputError, reason: str) -> Candidate:
        cand.problem, info.status, info.reason = exc, "skipped", reason
        return cand

    if modality != "CT":
        return fail(
            NotCTError(
                f"{label} in {source} is {modality or 'of unknown modality'}, not CT (e.g. '{first.path}')",
                hint="HyperCT reads chest CT only; choose a CT series",
            ),
            f"not CT ({modality or 'no Modality'})",
        )
    if first.sop_class_uid.startswith(SECONDARY_CAPTURE_PREFIX):
        return fail(
            NotCTError(
                f"{label} in {source} is a secondary capture (a picture of an image), not CT slices "
                f"(e.g. '{first.path}')",
                hint="choose the original CT series",
            ),
            "not CT (secondary capture)",
        )

    images = [h for h in slices if not h.is_localizer]
    n_localizers = len(slices) - len(images)
    info.n_slices = len(images)  # refined to the main stack below
    if not images:
        return fail(
            SeriesGeometryError(
                f"{label} in {source} holds only localizer/scout images (e.g. '{first.path}'), not a volume",
                hint="choose the axial CT series",
            ),
            "localizer",
        )
    broken = [h for h in images if h.error]
    if broken:
        return fail(
            CorruptFileError(
                f"{label} in {source}: unreadable header value in '{broken[0].name}' ({broken[0].error})",
                path=broken[0].path,
                hint="the file is damaged; copy the series again from the source media or PACS",
            ),
            f"corrupt header ({len(broken)} file(s))",
        )
    for kw, attr in (
        ("ImagePositionPatient", "ipp"),
        ("ImageOrientationPatient", "iop"),
        ("PixelSpacing", "pixel_spacing"),
    ):
        missing = [h for h in images if getattr(h, attr) is None]
        if missing:
            return fail(
                SeriesGeometryError(
                    f"{label} in {source}: {kw} is missing in {len(missing)} of {len(images)} images "
                    f"(e.g. '{missing[0].name}'), so the slices cannot be placed in space",
                    hint="export the series again as standard CT image storage with full geometry tags",
                ),
                f"missing {kw}",
            )
    ordered = _group_stacks(images)
    main, others = ordered[0], ordered[1:]
    if len(ordered) > 1 and len(main) == 1 and all(len(g) == 1 for g in ordered):
        # several single images of different orientations: localizers without the tag
        if all(_is_orthogonal(a[0], b[0]) or a is b for a in ordered for b in ordered):
            return fail(
                SeriesGeometryError(
                    f"{label} in {source} holds {len(ordered)} single images in different planes (localizers), "
                    "not a volume",
                    hint="choose the axial CT series",
                ),
                "localizer",
            )
    kept_others = []
    for g in others:
        if len(g) == 1 and _is_orthogonal(g[0], main[0]):
            n_localizers += 1  # a single slice in an orthogonal plane: a localizer
        else:
            kept_others.append(g)
    notes = [f"{n_localizers} localizer image(s) ignored"] if n_localizers else []
    cand.slices = main
    info.n_slices = len(main)
    info.matrix = (main[0].rows, main[0].cols)
    thick = [h.slice_thickness for h in main if h.slice_thickness]
    info.slice_thickness = float(np.median(thick)) if thick else None
    if main[0].iop is not None:
        try:
            info.orientation = geometry.orientation_label(np.cross(main[0].iop[:3], main[0].iop[3:]))
        except Exception:  # noqa: BLE001
            info.orientation = ""

    if kept_others:
        odd = kept_others[0][0]
        what = "matrix size" if (odd.rows, odd.cols) != info.matrix else "orientation"
        return fail(
            SeriesGeometryError(
                f"{label} in {source} mixes {what}s: {len(main)} slices like '{main[0].path}' "
                f"({main[0].rows}x{main[0].cols}) and {sum(len(g) for g in kept_others)} like '{odd.path}' "
                f"({odd.rows}x{odd.cols})",
                hint="the series holds more than one stack; export each stack as its own series",
            ),
            f"mixed {what}",
        )
    if any(h.samples_per_pixel != 1 for h in main):
        return fail(
            NotCTError(
                f"{label} in {source} holds colour images (SamplesPerPixel {main[0].samples_per_pixel}), "
                f"not CT slices (e.g. '{main[0].path}')",
                hint="choose the original greyscale CT series",
            ),
            "not CT (colour images)",
        )

    without_rescale = [h for h in main if not h.has_rescale]
    if without_rescale and len(without_rescale) < len(main):
        miss = without_rescale[0]
        return fail(
            CorruptFileError(
                f"{label} in {source}: RescaleSlope/RescaleIntercept are missing in '{miss.name}' "
                f"({len(without_rescale)} of {len(main)} slices) while the other slices have them, so its stored "
                "values cannot be converted to HU like theirs",
                path=miss.path,
                hint="the file is damaged or does not belong to the series; copy the series again from the source "
                "media or PACS",
            ),
            f"RescaleSlope/Intercept missing in {len(without_rescale)} slice(s)",
        )

    def too_few() -> Candidate:
        one = (
            " (a single file is one slice: open the folder that holds the whole series)"
            if len(main) == 1
            else ""
        )
        return fail(
            TooFewSlicesError(
                f"{label} in {source} has only {len(main)} slice(s) (e.g. '{main[0].name}'); a chest CT volume "
                f"needs at least {min_slices}{one}",
                hint="select the complete series, or if this short volume is intended lower the minimum "
                "(hyperct predict --min-slices N; read_ct(..., min_slices=N))",
            ),
            f"too few slices ({len(main)} < {min_slices})",
        )

    if len(main) < 2:
        return too_few()
    iops = np.stack([h.iop for h in main])
    if np.max(np.abs(iops - iops[0])) > geometry.ORIENTATION_TOL:
        return fail(
            SeriesGeometryError(
                "slices have different ImageOrientationPatient values", where=f"{label} in {source}"
            ),
            "mixed orientation",
        )
    spacings = np.array([h.pixel_spacing for h in main])
    if np.max(np.abs(spacings - spacings[0])) > 1e-3:
        bad = main[int(np.argmax(np.max(np.abs(spacings - spacings[0]), axis=1)))]
        return fail(
            SeriesGeometryError(
                f"{label} in {source}: PixelSpacing differs between slices ('{main[0].name}' "
                f"{list(spacings[0])} vs '{bad.name}' {list(bad.pixel_spacing)})",
                hint="the series mixes reconstructions; export each as its own series",
            ),
            "mixed pixel spacing",
        )
    try:
        geom = geometry.sort_stack(
            np.stack([h.ipp for h in main]),
            iops.mean(axis=0),
            tuple(spacings[0]),
            [h.name for h in main],
            f"{label} in {source}",
            allow_tilt=resample_tilt,
        )
    except SeriesGeometryError as exc:
        return fail(exc, f"geometry: {exc.cause}")
    if len(main) < min_slices:  # after the geometry checks: a gap explains a short series better
        return too_few()
    cand.geometry = geom
    info.slice_spacing = geom.slice_step
    info.status = "usable"
    info.reason = "; ".join(notes + (["gantry tilt (will be resampled)"] if geom.is_sheared else []))
    return cand


def build_candidates(scan_result: ScanResult, *, min_slices: int, resample_tilt: bool) -> list[Candidate]:
    groups: dict[str, list[SliceHeader]] = {}
    for h in scan_result.images:
        groups.setdefault(h.series_uid, []).append(h)
    cands = [
        _build_candidate(uid, sl, scan_result.source, min_slices=min_slices, resample_tilt=resample_tilt)
        for uid, sl in groups.items()
    ]
    for cand in cands:
        _name_gap_filler(cand, scan_result)
    non_image_groups: dict[str, list[NonImageFile]] = {}
    for f in scan_result.non_images:
        if f.reason.startswith("non-image (DICOMDIR"):
            continue
        non_image_groups.setdefault(f.series_uid, []).append(f)
    for uid, files in non_image_groups.items():
        info = SeriesInfo(
            uid=uid,
            description=files[0].series_description,
            modality=files[0].modality,
            series_number=files[0].series_number,
            n_files=len(files),
            status="skipped",
            reason=files[0].reason,
            paths=[f.path for f in files],
        )
        label = series_label(uid, info.description, info.series_number)
        problem = NoImageDataError(
            f"{label} in {scan_result.source} is a {files[0].reason} (e.g. '{files[0].path}'), not CT images",
            hint="choose a CT image series",
        )
        cands.append(Candidate(info, problem=problem, has_images=False))
    return cands


def _name_gap_filler(cand: Candidate, scan_result: ScanResult) -> None:
    """A gap in a series whose missing slice is beside it under another SeriesInstanceUID: name that file.

    A damaged UID moves a slice out of its series; the gap then has a cause the user can act on."""
    if (
        not isinstance(cand.problem, SeriesGeometryError)
        or "a gap" not in str(cand.problem)
        or not cand.slices
    ):
        return
    ref = cand.slices[0]
    if ref.iop is None:
        return
    normal = np.cross(ref.iop[:3], ref.iop[3:])
    mine = np.array([float(h.ipp @ normal) for h in cand.slices if h.ipp is not None])
    folders = {os.path.dirname(h.path) for h in cand.slices}
    if mine.size < 2:
        return
    for h in scan_result.images:
        if (
            h.series_uid == cand.info.uid
            or os.path.dirname(h.path) not in folders
            or h.ipp is None
            or h.iop is None
        ):
            continue
        if (h.rows, h.cols) != (ref.rows, ref.cols) or float(
            np.max(np.abs(h.iop - ref.iop))
        ) > geometry.ORIENTATION_TOL:
            continue
        pos = float(h.ipp @ normal)
        if mine.min() < pos < mine.max() and float(np.min(np.abs(mine - pos))) > geometry.DUPLICATE_TOL_MM:
            cand.problem = SeriesGeometryError(
                f"{cand.problem.cause}; '{h.name}' beside these slices lies in the gap but carries another SeriesInstanceUID "
                f"({h.series_uid or 'none'}), so it is probably a slice of this series with a damaged header",
                where=cand.problem.where,
                path=h.path,
                hint="copy the series again from the source media or PACS",
            )
            return


def _rank_key(c: Candidate) -> tuple:
    i = c.info
    return (
        -i.n_slices,
        i.slice_thickness if i.slice_thickness else 1e9,
        i.series_number if i.series_number is not None else 1 << 30,
        i.uid,
    )


def select(
    cands: list[Candidate], scan_result: ScanResult, *, series_uid: str | None = None
) -> tuple[Candidate, str]:
    """Pick the series to read (and mark every SeriesInfo). Raises the most useful typed error."""
    source = scan_result.source
    if series_uid is not None:
        chosen = sorted((c for c in cands if c.info.uid == series_uid), key=lambda c: not c.has_images)
        if not chosen:
            found = (
                ", ".join(f"{c.info.uid} ({c.info.modality}, {c.info.n_slices} slices)" for c in cands)
                or "none"
            )
            raise SeriesSelectionError(
                f"series {series_uid} is not in {source}; series found: {found}",
                hint="use list_series (CLI: hyperct info) to see the series UIDs",
            )
        # several groups cannot share one UID: groups are keyed by UID
        cand = chosen[0]
        if cand.problem is not None:
            raise cand.problem
        rule = "requested by SeriesInstanceUID"
    else:
        usable = sorted((c for c in cands if c.problem is None and c.slices), key=_rank_key)
        if not usable:
            raise _nothing_usable(cands, scan_result)
        cand = usable[0]
        rule = SELECTION_RULE
        for other in usable[1:]:
            other.info.status = "usable"
            other.info.reason = "; ".join(
                x
                for x in (other.info.reason, f"not selected: {series_label(cand.info.uid)} ranks first")
                if x
            )
    cand.info.status = "selected"
    thick = f", {cand.info.slice_thickness:g} mm" if cand.info.slice_thickness else ""
    why = f"selected ({rule}; {cand.info.n_slices} slices{thick})"
    cand.info.reason = "; ".join(x for x in (why, cand.info.reason) if x)
    return cand, rule


def _nothing_usable(cands: list[Candidate], scan_result: ScanResult) -> InputError:
    source = scan_result.source
    images = [c for c in cands if c.has_images]
    ct = sorted((c for c in images if c.info.modality == "CT"), key=lambda c: (-len(c.slices), c.info.uid))
    if ct:
        return ct[0].problem  # type: ignore[return-value]
    if images:
        if len(images) == 1:
            return images[0].problem  # type: ignore[return-value]
        kinds = ", ".join(sorted({c.info.reason for c in images}))
        return NotCTError(
            f"{source} holds no CT image series (found {len(images)} image series: {kinds}; e.g. "
            f"{series_label(images[0].info.uid, images[0].info.description)})",
            hint="HyperCT reads chest CT only; choose a folder or files with a CT series",
        )
    if scan_result.unreadable:
        path, exc = scan_result.unreadable[0]
        more = f" ({len(scan_result.unreadable)} unreadable files)" if len(scan_result.unreadable) > 1 else ""
        return CorruptFileError(exc.cause + more, path=path, hint=exc.hint)
    others = [c for c in cands if c.problem is not None]
    if len(others) == 1:
        return others[0].problem  # type: ignore[return-value]
    found = (
        f"only {len(others)} non-image series ({', '.join(sorted({c.info.reason for c in others}))})"
        if others
        else ""
    )
    volumes = [p for p in scan_result.not_dicom if p.lower().endswith(VOLUME_SUFFIXES)]
    example = volumes[0] if volumes else (scan_result.not_dicom[0] if scan_result.not_dicom else "")
    skipped = f"{len(scan_result.not_dicom)} non-DICOM file(s), e.g. '{example}'" if example else ""
    detail = "; ".join(x for x in (found, skipped) if x)
    return NoImageDataError(
        f"no DICOM CT images found in {source}" + (f" ({detail})" if detail else ""),
        hint=f"open the volume file itself ('{volumes[0]}')"
        if volumes
        else "drop a DICOM folder, a DICOMDIR, or a NIfTI/NRRD/MHA file",
    )
