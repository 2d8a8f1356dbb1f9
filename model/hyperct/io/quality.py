"""Quality-control warnings for a CT volume (carried with the volume into every export).

``assess_quality(vol)`` looks at the HU array (on a ~4 mm subsample, so it is cheap) and at the
header metadata. It never raises for odd content: it warns. Codes:

* ``not_chest``: little or no lung air inside the body, or no body. The body is the largest 3-D
  connected region denser than -500 HU (so the table and other objects lying apart are not body);
  in each axial slice its largest 2-D part (the torso: arms lie apart) is closed by its convex hull,
  which keeps lungs that a tight field of view cuts off at the image edge inside the body (a hole
  fill loses them: they touch the outside). Lung air = connected air (< -500 HU) inside those hulls
  that spans at least ``LUNG_MIN_EXTENT`` (25 %) of the body's slices (lungs run along a chest
  scan; bowel gas pockets and the lung bases at the top of an abdomen scan do not); less than
  ``MIN_LUNG_FRACTION`` (5 %) of the hull volume fires the warning;
* ``contrast``: a ContrastBolusAgent is recorded, or a large bright blood pool (a connected region of
  more than 100 mL at 150-600 HU: heart/aorta with iodine); the model expects non-contrast CT;
* ``thick_slices``: slice thickness (or, without the tag, the coarsest spacing) above 5 mm;
* ``implausible_hu``: values that do not look like Hounsfield units (no air at all, e.g. unrescaled
  stored values; absurd extremes; a constant image);
* ``oblique_snapped``: the grid is oblique and was mapped to the nearest axis-aligned orientation.

The reader adds its own codes: ``gantry_tilt_resampled``, ``unreadable_files``, ``nonfinite_values``,
``series_skipped``.

``SCOPE_CODES`` are the warnings that say the input is outside what the model is meant for (not a
chest CT, contrast, implausible HU): the reports show them on page 1 beside the findings, the SR
carries them in its content tree and ``hyperct predict`` prints them. ``check_scorable`` refuses a
constant volume (nothing to score) with a typed error.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from hyperct.errors import InputError
from hyperct.volume import CANONICAL_DIRECTION, CTVolume, QCWarning

NOT_CHEST = "not_chest"
CONTRAST = "contrast"
THICK_SLICES = "thick_slices"
IMPLAUSIBLE_HU = "implausible_hu"
OBLIQUE = "oblique_snapped"
TILT_RESAMPLED = "gantry_tilt_resampled"
UNREADABLE_FILES = "unreadable_files"
NONFINITE_VALUES = "nonfinite_values"
SERIES_SKIPPED = "series_skipped"

MAX_SLICE_THICKNESS_MM = 5.0
MIN_LUNG_FRACTION = 0.05
BLOOD_POOL_HU = (150.0, 600.0)
BLOOD_POOL_MIN_ML = 100.0
OBLIQUE_TOL_DEG = 0.1
_SAMPLE_MM = 4.0
_NO_AGENT = {"", "NONE", "NO", "N", "NA", "N/A", "0", "NIL", "WITHOUT"}
SCOPE_CODES = (NOT_CHEST, CONTRAST, IMPLAUSIBLE_HU)
AIR_HU = -500.0
LUNG_GRID_MIN_PX = 64  # a small field of view is sampled finer than 4 mm for the lung measure
LUNG_MIN_EXTENT = 0.25  # lung air = air regions inside the body spanning >= 25 % of the body's slices


class ConstantVolumeError(InputError):
    """Every voxel has the same value: there is no image to score."""


def out_of_scope(warnings) -> list[QCWarning]:
    """The warnings (QCWarning or {"code", "message"} dicts) saying the input is out of the model's scope."""
    out = []
    for w in warnings:
        code = w["code"] if isinstance(w, dict) else w.code
        message = w["message"] if isinstance(w, dict) else w.message
        if code in SCOPE_CODES:
            out.append(QCWarning(code, message))
    return out


def check_scorable(vol: CTVolume, label: str | None = None) -> None:
    """Refuse (``ConstantVolumeError``) a volume without any contrast between voxels."""
    finite = vol.hu[np.isfinite(vol.hu)]
    if finite.size == 0 or float(finite.max()) - float(finite.min()) < 1e-3:
        value = "no finite value" if finite.size == 0 else f"every voxel is {float(finite.min()):.0f} HU"
        src = label or (vol.source_paths[0] if vol.source_paths else None)
        raise ConstantVolumeError(
            f"constant volume ({value}): there is no image to score" + (f" ({src})" if src else ""),
            hint="check the export of this series (blank or padding-only images); nothing was written",
        )


def _lungs_and_body(sub: np.ndarray) -> tuple[int, int]:
    """(lung-air voxels, body voxels) on the subsampled grid (see the module docstring)."""
    from skimage.morphology import convex_hull_image

    dense = np.isfinite(sub) & (sub > AIR_HU)
    air = np.isfinite(sub) & (sub <= AIR_HU)
    labels, n = ndimage.label(dense)
    if n == 0:
        return 0, 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = labels == int(np.argmax(sizes))
    hull = np.zeros_like(body)
    for k in range(body.shape[0]):
        sl = body[k]
        if not sl.any():
            continue
        lab2, m = ndimage.label(sl)
        if m > 1:
            s2 = np.bincount(lab2.ravel())
            s2[0] = 0
            sl = lab2 == int(np.argmax(s2))
        if sl.sum() >= 3:
            hull[k] = convex_hull_image(sl)
    body_n = int(hull.sum())
    if body_n == 0:
        return 0, 0
    # lungs run along most of a chest scan; bowel gas pockets and lung bases seen on an abdomen scan do not
    n_slices = int(np.count_nonzero(hull.any(axis=(1, 2))))
    min_extent = max(2, int(np.ceil(LUNG_MIN_EXTENT * n_slices)))
    # one voxel in from the hull's edge: the hull of a pixelated outline adds a rim of air voxels
    core = ndimage.binary_erosion(hull, structure=np.ones((1, 3, 3), dtype=bool), border_value=1)
    inside, m = ndimage.label(core & air)
    lungs_n = 0
    if m:
        counts = np.bincount(inside.ravel())
        for idx, box in enumerate(ndimage.find_objects(inside), start=1):
            if box is not None and box[0].stop - box[0].start >= min_extent:
                lungs_n += int(counts[idx])
    return lungs_n, body_n


def _subsample(vol: CTVolume, min_inplane: int = 1) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Every n-th voxel (about ``_SAMPLE_MM`` apart), keeping at least ``min_inplane`` rows/columns."""
    steps = [max(1, int(_SAMPLE_MM // s)) if s > 0 else 1 for s in vol.spacing]
    for ax in (1, 2):
        steps[ax] = max(1, min(steps[ax], vol.shape[ax] // max(1, min_inplane)))
    steps = tuple(steps)
    sub = vol.hu[:: steps[0], :: steps[1], :: steps[2]]
    return sub, tuple(s * st for s, st in zip(vol.spacing, steps))


def _oblique_deg(direction: np.ndarray) -> float:
    cos = np.abs(np.sum(np.asarray(direction) * CANONICAL_DIRECTION, axis=0))
    return float(np.degrees(np.arccos(np.clip(cos.min(), -1.0, 1.0))))


def assess_quality(vol: CTVolume) -> list[QCWarning]:
    """QC warnings for ``vol`` (content + header). Does not modify ``vol``."""
    out: list[QCWarning] = []
    sub, sub_spacing = _subsample(vol)
    voxel_ml = float(np.prod(sub_spacing)) / 1000.0
    finite = sub[np.isfinite(sub)]

    # -- HU plausibility --------------------------------------------------------------------------
    hu_ok = True
    if finite.size == 0:
        out.append(QCWarning(IMPLAUSIBLE_HU, "the volume holds no finite values"))
        return out
    lo, hi = (float(v) for v in np.percentile(finite, [0.5, 99.5]))
    vmin, vmax = float(finite.min()), float(finite.max())
    if vmax - vmin < 1e-3:
        out.append(QCWarning(IMPLAUSIBLE_HU, f"the volume is constant ({vmin:.0f} HU)"))
        hu_ok = False
    elif lo > -500.0:
        out.append(
            QCWarning(
                IMPLAUSIBLE_HU,
                f"no air in the volume (0.5th percentile {lo:.0f} HU; air is -1000 HU): the values look "
                "unrescaled (stored values without RescaleSlope/Intercept) or the scan is cropped to tissue",
            )
        )
        hu_ok = False
    elif vmin < -4000.0 or vmax > 40000.0:
        out.append(
            QCWarning(IMPLAUSIBLE_HU, f"values from {vmin:.0f} to {vmax:.0f} HU are outside any CT scale")
        )
        hu_ok = False

    # -- slice thickness --------------------------------------------------------------------------
    thickness = vol.metadata.get("SliceThickness")
    try:
        thickness = float(thickness) if thickness not in (None, "") else None
    except (TypeError, ValueError):
        thickness = None
    source = "SliceThickness"
    if thickness is None or thickness <= 0:
        thickness, source = max(vol.spacing), "coarsest voxel spacing"
    if thickness > MAX_SLICE_THICKNESS_MM + 1e-6:
        out.append(
            QCWarning(
                THICK_SLICES,
                f"slice thickness {thickness:.2f} mm ({source}) is above {MAX_SLICE_THICKNESS_MM:.0f} mm; "
                "the model expects thin-slice CT, small findings may be missed",
            )
        )

    # -- contrast (header) ------------------------------------------------------------------------
    agent = str(vol.metadata.get("ContrastBolusAgent") or "").strip()
    contrast_noted = False
    if agent.upper() not in _NO_AGENT:
        out.append(
            QCWarning(
                CONTRAST,
                f"contrast agent recorded in the header (ContrastBolusAgent '{agent}'); the model is meant "
                "for non-contrast CT",
            )
        )
        contrast_noted = True

    # -- anatomy: body, lungs, blood pool ---------------------------------------------------------
    if hu_ok:
        lung_grid, lung_spacing = _subsample(vol, min_inplane=LUNG_GRID_MIN_PX)
        lungs_n, body_n = _lungs_and_body(lung_grid)
        voxel_ml_lung = float(np.prod(lung_spacing)) / 1000.0
        if body_n == 0:
            out.append(QCWarning(NOT_CHEST, "no body found (nothing denser than -500 HU)"))
        elif lungs_n / body_n < MIN_LUNG_FRACTION:
            out.append(
                QCWarning(
                    NOT_CHEST,
                    f"little or no lung air (lung-like air inside the body outline is {100.0 * lungs_n / body_n:.1f} % of the body "
                    f"volume, {lungs_n * voxel_ml_lung:.0f} mL): this does not look like a chest CT",
                )
            )
        if not contrast_noted:
            bright = (sub >= BLOOD_POOL_HU[0]) & (sub <= BLOOD_POOL_HU[1])
            bright = ndimage.binary_erosion(bright)
            if bright.any():
                labels, n = ndimage.label(bright)
                sizes = np.bincount(labels.ravel())[1:]
                biggest_ml = float(sizes.max()) * voxel_ml
                if biggest_ml > BLOOD_POOL_MIN_ML:
                    out.append(
                        QCWarning(
                            CONTRAST,
                            f"a bright blood pool ({biggest_ml:.0f} mL connected at {BLOOD_POOL_HU[0]:.0f}-"
                            f"{BLOOD_POOL_HU[1]:.0f} HU) suggests iodinated contrast; the model is meant for "
                            "non-contrast CT",
                        )
                    )

    # -- geometry ---------------------------------------------------------------------------------
    deg = _oblique_deg(vol.direction)
    if deg > OBLIQUE_TOL_DEG:
        out.append(
            QCWarning(
                OBLIQUE,
                f"oblique acquisition ({deg:.1f} degrees off the patient axes) shown on the nearest axial/"
                "coronal/sagittal grid; positions in mm use the true orientation",
            )
        )
    return out
