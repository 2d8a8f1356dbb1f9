"""``hyperct.io``: turn what a user drops (DICOM folder/files/DICOMDIR, NIfTI, NRRD, MHA) into a
``CTVolume`` in Hounsfield units on the canonical grid, or into a typed ``hyperct.errors.InputError``.

API::

    read_ct(source, *, series_uid=None, resample_tilt=False, min_slices=16, rescale=None) -> CTVolume
    list_series(source, *, min_slices=16, resample_tilt=False) -> list[SeriesInfo]
    assess_quality(vol) -> list[QCWarning]

``source`` is a path (folder, file, DICOMDIR) or a list of paths (a multi-file selection).

DICOM rules
-----------
* Folders are searched recursively; any file with the 'DICM' marker (or a bare dataset) is read,
  whatever its name; a DICOMDIR is followed. Non-DICOM files are ignored. A DICOM file that cannot
  be parsed (e.g. cut short) in the same folder as the chosen series' files raises
  ``CorruptFileError`` (the volume could be incomplete); elsewhere it gives the QC warning
  ``unreadable_files``. A non-DICOM file named like the DICOM images beside it (an empty or cut-short
  slice: 'IM0020' next to 'IM0001'...) and a CT image file without Rows/Columns or pixel data count as
  unreadable DICOM files, so a damaged first or last slice is named, never silently dropped.
  Single-frame CT and enhanced (multi-frame) CT are read.
* Only regular files are opened (non-blocking open, then fstat): named pipes, devices and sockets under
  a folder are skipped; given as the input, or as an MHD/NRRD data file, they are refused.
* Sizes: a header's declared volume must not exceed ``geometry.MAX_VOXELS`` (2**30 voxels, 4 GiB as
  float32) and must match the bytes present (native DICOM pixel data exactly Rows x Columns x frames x
  samples x bytes, plus one byte of even-length padding; a .nii exactly ``vox_offset`` + data; a .nii.gz
  is inflated once with its gzip CRC and length checked; MHD/NRRD raw or compressed data at least the
  declared size) before memory is allocated. MHD/NRRD data-file entries must name regular files inside
  the header's folder.
* Series = SeriesInstanceUID (never merged). Non-image objects (SR, RT, PR, DICOMDIR...) and
  localizers (ImageType LOCALIZER/SCOUT/TOPOGRAM, or a single image in a plane orthogonal to the
  stack) are skipped. A series mixing orientations or matrix sizes is rejected.
* Selection: ``dicom_series.SELECTION_RULE`` (most slices, then thinnest, then lowest SeriesNumber)
  among the usable CT series, or ``series_uid=``. The rule and short summaries of the other series
  are recorded in ``metadata["SelectionRule"]`` / ``metadata["OtherSeries"]``; if a larger CT series
  was skipped for a defect, the QC warning ``series_skipped`` says so.
* Values: HU = stored * RescaleSlope + RescaleIntercept per slice (``rescale=(slope, intercept)``
  overrides the header); PixelPaddingValue (to PixelPaddingRangeLimit) becomes -1000 HU. A slice without
  RescaleSlope/Intercept among slices that have them, rescale values that would give infinite HU, and
  NaN/inf SliceThickness or PixelSpacing are refused (``CorruptFileError`` naming the file); other
  non-finite header values are left out of the metadata.
* Geometry: slices sorted by position along the slice normal; a step differing from the median by
  more than max(10 %, 0.05 mm) is a gap/uneven spacing, closer than 0.01 mm a duplicate; slice
  origins drifting in-plane by more than half a pixel is a gantry tilt (rejected unless
  ``resample_tilt=True``: then each slice is shifted back by linear interpolation and a QC warning
  ``gantry_tilt_resampled`` is added). Fewer than ``min_slices`` slices -> ``TooFewSlicesError``.

Geometry of the result (see ``hyperct.volume``): canonical axes (k, j, i) = (S->I, A->P, R->L). The
*source grid* is the input's own voxel grid as an array with axes (k, j, i): for DICOM, slices
sorted by increasing position along ``row_dir x col_dir`` (k), rows (j) and columns (i); for
NIfTI/NRRD/MHA the file's index axes reversed (i.e. ``data.T`` for nibabel, the SimpleITK array for
ITK). ``CTVolume.source_affine`` maps source index (i, j, k, 1) to LPS mm;
``CTVolume.reorientation`` (and ``CTVolume.to_source_grid``) maps arrays between the two grids.
An oblique grid keeps its true direction matrix and gets a QC warning ``oblique_snapped``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from hyperct.errors import CorruptFileError, InputError, UnsupportedInputError
from hyperct.io import dicom_scan, dicom_series, dicom_volume, image_files, quality
from hyperct.io.dicom_series import SELECTION_RULE, SeriesInfo
from hyperct.io.quality import assess_quality
from hyperct.volume import CTVolume, QCWarning

__all__ = ["read_ct", "list_series", "SeriesInfo", "assess_quality", "SELECTION_RULE", "SUPPORTED_SUFFIXES"]

# one list with the viewer's reader (hyperct_viewer/reader.py, napari.yaml; tests/packaging/test_manifest.py)
SUPPORTED_SUFFIXES = (*dicom_series.VOLUME_SUFFIXES, ".dcm")  # + folders, DICOMDIR, no-suffix DICOM
_SUPPORTED_TEXT = "a DICOM folder, DICOM files, a DICOMDIR, or a .nii/.nii.gz/.nrrd/.nhdr/.mha/.mhd file"


def _paths(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> tuple[list[Path], str]:
    if isinstance(source, str | os.PathLike):
        items = [Path(source)]
        label = str(source)
    else:
        items = [Path(p) for p in source]
        if not items:
            raise UnsupportedInputError("no files given (empty selection)", hint=f"select {_SUPPORTED_TEXT}")
        label = str(items[0]) if len(items) == 1 else f"{len(items)} selected paths ({items[0].parent})"
    for p in items:
        if not p.exists():
            raise UnsupportedInputError("no such file or folder", path=p, hint=f"select {_SUPPORTED_TEXT}")
        if not p.is_dir() and not dicom_scan.is_regular_file(p):
            raise UnsupportedInputError(
                f"{dicom_scan.file_kind(p)}, not a regular file; only regular files are read",
                path=p,
                hint=f"select {_SUPPORTED_TEXT}",
            )
    return items, label


def _single_image_file(items: list[Path]) -> tuple[Path, str] | None:
    fmts = [(p, image_files.image_format(p)) for p in items if p.is_file()]
    found = [(p, f) for p, f in fmts if f]
    if not found:
        return None
    if len(items) > 1:
        raise UnsupportedInputError(
            f"a {found[0][1]} file was selected together with {len(items) - 1} other path(s)",
            path=found[0][0],
            hint="open one NIfTI/NRRD/MHA file at a time, or only DICOM files",
        )
    return found[0]


def _check_args(min_slices: int, rescale: tuple[float, float] | None) -> None:
    if int(min_slices) < 2:
        raise ValueError(f"min_slices must be >= 2, got {min_slices}")
    if rescale is not None and (len(rescale) != 2 or float(rescale[0]) == 0.0):
        raise ValueError(f"rescale must be (slope, intercept) with a non-zero slope, got {rescale!r}")


def _check_dicom_file(items: list[Path]) -> None:
    """A single file that is neither a known image format nor DICOM: say what is supported."""
    if len(items) == 1 and items[0].is_file():
        is_dicom, _ = dicom_scan.looks_like_dicom(str(items[0]))
        if not is_dicom:
            raise UnsupportedInputError(
                "not a DICOM, NIfTI, NRRD or MHA file",
                path=items[0],
                hint=f"open {_SUPPORTED_TEXT}",
            )


def list_series(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    min_slices: int = 16,
    resample_tilt: bool = False,
) -> list[SeriesInfo]:
    """Every series found in ``source`` (headers only), with the one ``read_ct`` would pick marked.

    Usable series come first (selected, then by the selection rule), then the skipped ones with the
    reason. For a NIfTI/NRRD/MHA file, one entry describing the file.
    """
    _check_args(min_slices, None)
    items, label = _paths(source)
    single = _single_image_file(items)
    if single is not None:
        path, fmt = single
        return [
            SeriesInfo(
                uid="", description=path.name, status="selected", reason=f"{fmt} file", paths=[str(path)]
            )
        ]
    _check_dicom_file(items)
    scan = dicom_scan.scan(items, label)
    cands = dicom_series.build_candidates(scan, min_slices=min_slices, resample_tilt=resample_tilt)
    try:
        dicom_series.select(cands, scan)
    except Exception:  # noqa: BLE001 - listing never fails because nothing is usable
        pass
    order = {"selected": 0, "usable": 1, "skipped": 2}
    infos = [c.info for c in cands]
    return sorted(infos, key=lambda i: (order.get(i.status, 3), -i.n_slices, i.uid))


def read_ct(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    series_uid: str | None = None,
    resample_tilt: bool = False,
    min_slices: int = 16,
    rescale: tuple[float, float] | None = None,
) -> CTVolume:
    """Read a CT volume in HU on the canonical grid, with QC warnings; raise ``InputError`` otherwise."""
    _check_args(min_slices, rescale)
    items, label = _paths(source)
    single = _single_image_file(items)
    if single is not None:
        path, fmt = single
        if fmt == "nifti":
            vol = image_files.read_nifti(path, rescale=rescale, min_slices=min_slices)
        else:
            vol = image_files.read_itk(path, fmt, rescale=rescale, min_slices=min_slices)
        _add_warnings(vol, assess_quality(vol))
        return vol

    _check_dicom_file(items)
    scan = dicom_scan.scan(items, label)
    cands = dicom_series.build_candidates(scan, min_slices=min_slices, resample_tilt=resample_tilt)
    try:
        cand, rule = dicom_series.select(cands, scan, series_uid=series_uid)
    except InputError as exc:
        ct_folders = {os.path.dirname(p) for c in cands if c.info.modality == "CT" for p in c.info.paths}
        _raise_unreadable_in(scan, ct_folders, exc)
        raise
    _raise_unreadable_in(scan, {os.path.dirname(p) for p in cand.info.paths}, None)
    vol = dicom_volume.assemble(cand, label, rescale=rescale)
    others = [c for c in cands if c is not cand]
    vol.metadata["SelectionRule"] = rule
    vol.metadata["OtherSeries"] = [c.info.summary() for c in others]
    reader_warnings: list[QCWarning] = []
    bigger = [
        c
        for c in others
        if c.has_images
        and c.info.modality == "CT"
        and c.problem is not None
        and c.info.n_slices > cand.info.n_slices
    ]
    if bigger and series_uid is None:
        b = bigger[0].info
        reader_warnings.append(
            QCWarning(
                quality.SERIES_SKIPPED,
                f"a larger CT series was skipped: {dicom_series.series_label(b.uid, b.description, b.series_number)} "
                f"with {b.n_slices} slices ({b.reason})",
            )
        )
    if scan.unreadable:
        path = scan.unreadable[0][0]
        reader_warnings.append(
            QCWarning(
                quality.UNREADABLE_FILES,
                f"{len(scan.unreadable)} DICOM file(s) could not be read and were ignored, e.g. '{path}'",
            )
        )
    _add_warnings(vol, reader_warnings + assess_quality(vol))
    return vol


def _raise_unreadable_in(scan: dicom_scan.ScanResult, folders: set[str], cause: Exception | None) -> None:
    """A damaged DICOM file next to the series' own files is probably one of its slices: refuse."""
    bad = [(p, r) for p, r in scan.unreadable if os.path.dirname(p) in folders]
    if bad:
        path, exc = bad[0]
        more = f" ({len(bad)} damaged files in the series' folder)" if len(bad) > 1 else ""
        raise CorruptFileError(
            f"{exc.cause}{more}; it sits with the series' slices, so the volume may be incomplete",
            path=path,
            hint="copy the series again from the source media or PACS, or remove the file if it does not belong "
            "to the series",
        ) from cause


def _add_warnings(vol: CTVolume, warnings: list[QCWarning]) -> None:
    for w in warnings:
        vol.warn(w.code, w.message)
