"""Quality-control warnings for a CT volume (carried with the volume into every export).

``assess_quality(vol)`` looks at the HU array (on a ~4 mm subsample, so it is cheap) and at the
header metadata. It never raises for odd content: it warns. Codes:

* ``not_chest``: little or no lung air inside the body (lungs < 5 % of the body volume), or no body;
* ``contrast``: a ContrastBolusAgent is recorded, or a large bright blood pool (a connected region of
  more than 100 mL at 150-600 HU: heart/aorta with iodine); the model expects non-contrast CT;
* ``thick_slices``: slice thickness (or, without the tag, the coarsest spacing) above 5 mm;
* ``implausible_hu``: values that do not look like Hounsfield units (no air at all, e.g. unrescaled
  stored values; absurd extremes; a constant image);
* ``oblique_snapped``: the grid is oblique and was mapped to the nearest axis-aligned orientation.

The reader adds its own codes: ``gantry_tilt_resampled``, ``unreadable_files``, ``nonfinite_values``,
``series_skipped``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

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


def _subsample(vol: CTVolume) -> tuple[np.ndarray, tuple[float, float, float]]:
    steps = tuple(max(1, int(_SAMPLE_MM // s)) if s > 0 else 1 for s in vol.spacing)
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
        body = sub > -500.0
        filled = ndimage.binary_fill_holes(body, structure=np.ones((1, 3, 3), dtype=bool))
        body_n = int(filled.sum())
        lungs_n = int(np.count_nonzero(filled & ~body))
        if body_n == 0:
            out.append(QCWarning(NOT_CHEST, "no body found (nothing denser than -500 HU)"))
        elif lungs_n / body_n < MIN_LUNG_FRACTION:
            out.append(
                QCWarning(
                    NOT_CHEST,
                    f"little or no lung air (air inside the body is {100.0 * lungs_n / body_n:.1f} % of the body "
                    f"volume, {lungs_n * voxel_ml:.0f} mL): this does not look like a chest CT",
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
