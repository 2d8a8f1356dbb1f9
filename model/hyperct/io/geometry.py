"""Slice-stack geometry: sorting along the slice normal, spacing/tilt checks, canonical reorientation.

Conventions (shared by every reader in ``hyperct.io``):

* A *source grid* is the file's own voxel grid, held as a NumPy array with axes ``(k, j, i)``
  (like SimpleITK and ``CTVolume.hu``). For DICOM, ``i`` = column, ``j`` = row and ``k`` = slices
  sorted by increasing position along the normal ``row_dir x col_dir``; for NIfTI/NRRD/MHA the
  file's ``(i, j, k)`` index axes.
* A *source affine* is the 4x4 matrix taking ``(i, j, k, 1)`` to LPS millimetres.
* ``canonical_layout`` finds the axis permutation + flips (``volume.Reorientation``) that bring the
  source array to the canonical grid of ``CTVolume`` (k: superior->inferior, j: anterior->posterior,
  i: right->left), the canonical spacing/origin and the true direction matrix.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from hyperct.errors import SeriesGeometryError, UnsupportedInputError
from hyperct.volume import Reorientation

# Tolerances (documented in the io package docstring).
ORIENTATION_TOL = 2e-3  # max abs difference of direction cosines between slices of one stack
DUPLICATE_TOL_MM = 0.01  # two slices closer than this along the normal are duplicates
SPACING_REL_TOL = 0.10  # a step may differ from the median step by at most 10 % ...
SPACING_ABS_TOL_MM = 0.05  # ... or by this much, whichever is larger
SHEAR_TOL_PX = 0.5  # in-plane drift of slice origins (pixels) ignored as rounding
OBLIQUE_TOL_DEG = 0.1  # deviation from the nearest axis above which the volume is called oblique

# The largest volume the reader accepts (voxels): 2**30 = 1024 x 1024 x 1024, 4 GiB as float32 HU. Sizes
# declared in a header are checked against it (and against the bytes present) before anything is allocated.
MAX_VOXELS = 2**30

# Canonical array axis -> (LPS axis, sign) it runs along.
_CANONICAL_TARGETS = ((2, -1.0), (1, 1.0), (0, 1.0))


@dataclass
class StackGeometry:
    """Geometry of one sorted stack of parallel 2-D slices."""

    order: np.ndarray  # indices into the input slice list, ascending along the normal
    row_dir: np.ndarray  # LPS unit vector of increasing column index (DICOM IOP[0:3])
    col_dir: np.ndarray  # LPS unit vector of increasing row index (DICOM IOP[3:6])
    normal: np.ndarray
    pixel_spacing: tuple[float, float]  # (between rows, between columns) mm
    slice_step: float  # mm between consecutive sorted slices along the normal
    origin: np.ndarray  # LPS position of pixel (0, 0) of the first sorted slice
    shift_px: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # (rows, cols) per sorted slice
    tilt_deg: float = 0.0

    @property
    def is_sheared(self) -> bool:
        return self.shift_px.size > 0 and bool(np.any(self.shift_px != 0))

    def affine(self, *, sheared: bool = False) -> np.ndarray:
        """Source affine of the stack; ``sheared`` gives the (tilted) acquisition grid itself."""
        dy, dx = self.pixel_spacing
        m = np.eye(4)
        m[:3, 0] = self.row_dir * dx
        m[:3, 1] = self.col_dir * dy
        m[:3, 2] = self.normal * self.slice_step
        if sheared and len(self.shift_px) > 1:
            last = len(self.shift_px) - 1
            per_slice = self.shift_px[last] / last
            m[:3, 2] += self.col_dir * dy * per_slice[0] + self.row_dir * dx * per_slice[1]
        m[:3, 3] = self.origin
        return m


def check_volume_size(shape: tuple[int, ...], where: str, *, path: object = None) -> None:
    """Refuse a declared volume size above ``MAX_VOXELS`` (or with a non-positive dimension)."""
    dims = [int(n) for n in shape]
    if any(n <= 0 for n in dims):
        raise UnsupportedInputError(
            f"the header declares an empty volume ({' x '.join(map(str, dims))} voxels)",
            where=where,
            path=path,
            hint="the header is damaged; re-export or re-convert the volume",
        )
    total = 1
    for n in dims:
        total *= n
    if total > MAX_VOXELS:
        raise UnsupportedInputError(
            f"the header declares {' x '.join(map(str, dims))} = {total:,} voxels, more than the reader's "
            f"limit of {MAX_VOXELS:,} (1024 x 1024 x 1024)",
            where=where,
            path=path,
            hint="if the header is right, crop or downsample the volume before opening it; otherwise the header "
            "is damaged",
        )


def _unit(v: np.ndarray, what: str, where: str) -> np.ndarray:
    n = float(np.linalg.norm(v))
    if not np.isfinite(n) or n < 0.5 or n > 1.5:
        raise SeriesGeometryError(
            f"{what} {np.round(v, 4).tolist()} is not a unit vector",
            where=where,
            hint="the ImageOrientationPatient tag is corrupt; re-export the series from the PACS",
        )
    return v / n


def orientation_vectors(iop: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, column and normal unit vectors from a 6-value ImageOrientationPatient."""
    iop = np.asarray(iop, dtype=np.float64)
    if iop.shape != (6,) or not np.all(np.isfinite(iop)):
        raise SeriesGeometryError(
            f"ImageOrientationPatient must hold 6 finite numbers, got {iop.tolist()}",
            where=where,
            hint="the header is corrupt; re-export the series from the PACS",
        )
    r = _unit(iop[:3], "row direction", where)
    c = _unit(iop[3:], "column direction", where)
    if abs(float(r @ c)) > 1e-2:
        raise SeriesGeometryError(
            f"ImageOrientationPatient row and column directions are not perpendicular "
            f"(cos = {float(r @ c):.3f})",
            where=where,
            hint="the header is corrupt; re-export the series from the PACS",
        )
    c = c - (r @ c) * r
    c /= np.linalg.norm(c)
    return r, c, np.cross(r, c)


def orientation_label(normal: np.ndarray) -> str:
    """'axial', 'coronal', 'sagittal' or 'oblique' for a slice normal (LPS)."""
    a = np.abs(np.asarray(normal, dtype=np.float64))
    m = int(np.argmax(a))
    if a[m] < np.cos(np.deg2rad(10.0)):
        return "oblique"
    return ("sagittal", "coronal", "axial")[m]


def sort_stack(
    positions: np.ndarray,
    iop: np.ndarray,
    pixel_spacing: tuple[float, float],
    names: list[str],
    where: str,
    *,
    allow_tilt: bool = False,
) -> StackGeometry:
    """Sort parallel slices along their normal and check the spacing.

    ``positions``: (N, 3) ImagePositionPatient values; ``iop``: the common orientation; ``names``:
    file (or frame) names used in error messages; ``where``: names the series. Raises
    ``SeriesGeometryError`` for duplicates, gaps, uneven spacing, irregular in-plane positions and a
    gantry tilt (unless ``allow_tilt``, which returns the per-slice shift to undo).
    """
    positions = np.asarray(positions, dtype=np.float64)
    n_slices = positions.shape[0]
    if positions.ndim != 2 or positions.shape[1] != 3 or not np.all(np.isfinite(positions)):
        raise SeriesGeometryError(
            "ImagePositionPatient values are not finite 3-D positions",
            where=where,
            hint="the header is corrupt; re-export the series from the PACS",
        )
    r, c, n = orientation_vectors(iop, where)
    dy, dx = (float(pixel_spacing[0]), float(pixel_spacing[1]))
    if not (np.isfinite(dy) and np.isfinite(dx) and dy > 0 and dx > 0):
        raise SeriesGeometryError(
            f"PixelSpacing {list(pixel_spacing)} is not positive",
            where=where,
            hint="the header is corrupt; re-export the series from the PACS",
        )
    if n_slices < 2:
        raise SeriesGeometryError(
            "a single slice is not a volume", where=where, hint="select the whole series"
        )

    along = positions @ n
    order = np.argsort(along, kind="stable")
    d = along[order] - along[order[0]]
    steps = np.diff(d)

    dup = np.flatnonzero(steps < DUPLICATE_TOL_MM)
    if dup.size:
        a, b = order[dup[0]], order[dup[0] + 1]
        raise SeriesGeometryError(
            f"{dup.size} duplicate slice position(s); e.g. '{names[a]}' and '{names[b]}' are both "
            f"at {float(along[a]):.3f} mm along the slice normal",
            where=where,
            hint="the folder holds the same slice twice (a copy or a second reconstruction with the same "
            "series UID); remove the duplicates or export the series again",
        )
    median = float(np.median(steps))
    tol = max(SPACING_REL_TOL * median, SPACING_ABS_TOL_MM)
    bad = np.flatnonzero(np.abs(steps - median) > tol)
    if bad.size:
        s = int(bad[0])
        a, b = order[s], order[s + 1]
        ratio = steps[s] / median
        kind = (
            f"a gap (about {round(ratio) - 1} missing slice(s))"
            if ratio > 1.5 and abs(ratio - round(ratio)) < 0.2
            else "uneven slice spacing"
        )
        raise SeriesGeometryError(
            f"{kind}: {steps[s]:.3f} mm between '{names[a]}' and '{names[b]}' where the typical "
            f"step is {median:.3f} mm ({bad.size} irregular step(s) in {n_slices} slices)",
            where=where,
            hint="the series is incomplete or mixes reconstructions; export the complete series again",
        )
    step = float(d[-1] / (n_slices - 1))

    # In-plane drift of the slice origins: rounding, or a gantry tilt (shear).
    rel = positions[order] - positions[order[0]]
    inplane = rel - np.outer(rel @ n, n)
    shift = np.stack([inplane @ c / dy, inplane @ r / dx], axis=1)  # (rows, cols) per sorted slice
    geom = StackGeometry(order, r, c, n, (dy, dx), step, positions[order[0]].copy())
    if float(np.max(np.abs(shift))) <= SHEAR_TOL_PX:
        return geom
    per_mm = np.linalg.lstsq(d[:, None], shift, rcond=None)[0]  # shift per mm along the normal
    residual = float(np.max(np.abs(shift - d[:, None] * per_mm)))
    if residual > SHEAR_TOL_PX:
        raise SeriesGeometryError(
            f"the slices do not line up (in-plane offsets of the slice origins vary irregularly "
            f"by up to {residual:.1f} pixels)",
            where=where,
            hint="the series mixes acquisitions or has corrupt ImagePositionPatient values",
        )
    shear_mm = float(np.hypot(per_mm[0, 0] * dy, per_mm[0, 1] * dx))
    tilt = float(np.degrees(np.arctan(shear_mm)))
    if not allow_tilt:
        raise SeriesGeometryError(
            f"gantry tilt of {tilt:.1f} degrees (the slice origins shift in-plane along the stack, "
            "so the voxels are sheared)",
            where=where,
            hint="resample it onto an orthogonal grid (hyperct predict --resample-tilt; read_ct(..., resample_tilt=True); "
            "the viewer does this itself), "
            "or reconstruct the scan without tilt on the scanner",
        )
    geom.shift_px = d[:, None] * per_mm
    geom.tilt_deg = tilt
    return geom


@dataclass(frozen=True)
class CanonicalLayout:
    """Where a source grid lands on the canonical grid."""

    reorientation: Reorientation
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    oblique_deg: float

    @property
    def is_oblique(self) -> bool:
        return self.oblique_deg > OBLIQUE_TOL_DEG


def canonical_layout(
    source_affine: np.ndarray, source_shape: tuple[int, int, int], where: str
) -> CanonicalLayout:
    """Axis permutation/flips, spacing, origin and true direction of the canonical grid.

    ``source_affine`` maps ``(i, j, k, 1)`` to LPS; ``source_shape`` is the ``(k, j, i)`` array shape.
    """
    a = np.asarray(source_affine, dtype=np.float64)
    m = a[:3, :3]
    if not np.all(np.isfinite(a)) or abs(np.linalg.det(m)) < 1e-9 * max(1.0, np.abs(m).max() ** 3):
        raise SeriesGeometryError(
            "the voxel-to-patient matrix is singular or not finite",
            where=where,
            hint="the file's orientation/spacing header is corrupt; re-export it",
        )
    spacing_src = np.linalg.norm(m, axis=0)  # (si, sj, sk)
    units = m / spacing_src  # columns: unit vectors of i, j, k
    # source array axis a (0:k, 1:j, 2:i) -> affine column 2 - a
    u = [units[:, 2 - ax] for ax in range(3)]
    best, best_score = None, -1.0
    for lps_axes in itertools.permutations(range(3)):  # lps_axes[src_axis] = LPS axis it follows
        score = sum(abs(u[ax][lps_axes[ax]]) for ax in range(3))
        if score > best_score + 1e-12:
            best, best_score = lps_axes, score
    assert best is not None
    perm, flip = [0, 0, 0], [False, False, False]
    for can, (lps, sign) in enumerate(_CANONICAL_TARGETS):
        src = best.index(lps)
        perm[can] = src
        flip[can] = bool(np.sign(u[src][lps]) != sign)
    cos = min(abs(u[ax][best[ax]]) for ax in range(3))
    oblique = float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))

    shape = tuple(int(source_shape[perm[c]]) for c in range(3))
    spacing = tuple(float(spacing_src[2 - perm[c]]) for c in range(3))
    direction = np.zeros((3, 3))
    for c in range(3):
        v = u[perm[c]] * (-1.0 if flip[c] else 1.0)
        direction[:, 2 - c] = v + 0.0  # no negative zeros
    idx_kji = [0, 0, 0]
    for c in range(3):
        idx_kji[perm[c]] = (source_shape[perm[c]] - 1) if flip[c] else 0
    origin = a @ np.array([idx_kji[2], idx_kji[1], idx_kji[0], 1.0])
    return CanonicalLayout(
        Reorientation(tuple(perm), tuple(flip)),
        shape,
        spacing,
        tuple(float(x) for x in origin[:3]),
        direction,
        oblique,
    )


def ras_to_lps(affine: np.ndarray) -> np.ndarray:
    """Convert a RAS voxel-to-world affine (NIfTI) to LPS (DICOM/ITK)."""
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)
