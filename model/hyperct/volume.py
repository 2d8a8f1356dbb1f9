"""``CTVolume``: a CT in Hounsfield units on a canonical, axis-aligned voxel grid.

Canonical orientation (what every part of HyperCT works in, and what napari shows):

* array axes ``(k, j, i)`` = ``(slice, row, column)``;
* ``i`` runs patient right -> left, ``j`` anterior -> posterior, ``k`` superior -> inferior.

So an axial slice ``hu[k]`` is displayed the radiological way (patient right on the image's
left, anterior at the top) and coronal/sagittal reformats have the head at the top.
Physical positions are DICOM patient coordinates (LPS, mm). The canonical direction matrix is
``diag(1, 1, -1)`` (columns: LPS unit vectors of i, j, k). A slightly oblique acquisition keeps its
true direction matrix (the nearest axis-aligned grid is used, and a QC warning says so).

napari gets only ``scale`` (mm) and ``translate``; its world axes are then millimetres along
(inferior, posterior, left), i.e. world = (-z, y, x) in LPS. The source affine and the
source -> canonical axis mapping are kept so results can be written back in the input's own grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

CANONICAL_DIRECTION = np.diag([1.0, 1.0, -1.0])
CANONICAL_AXES = ("superior->inferior", "anterior->posterior", "right->left")
NAPARI_AXIS_LABELS = ("I (mm)", "P (mm)", "L (mm)")

# Keys of ``CTVolume.metadata`` that identify the patient (removed in shareable exports).
PHI_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "AccessionNumber")


@dataclass(frozen=True)
class QCWarning:
    """A quality-control warning carried with the volume into every result and export."""

    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class Reorientation:
    """Axis permutation + flips that take a source array to the canonical grid.

    ``canonical = flip(transpose(source, perm), axes where flip is True)``: canonical axis ``a`` is
    source axis ``perm[a]``, reversed when ``flip[a]``.
    """

    perm: tuple[int, int, int] = (0, 1, 2)
    flip: tuple[bool, bool, bool] = (False, False, False)

    @property
    def is_identity(self) -> bool:
        return self.perm == (0, 1, 2) and not any(self.flip)

    def apply(self, source: np.ndarray) -> np.ndarray:
        out = np.transpose(source, self.perm + tuple(range(3, source.ndim)))
        axes = tuple(a for a in range(3) if self.flip[a])
        return np.flip(out, axis=axes) if axes else out

    def invert(self, canonical: np.ndarray) -> np.ndarray:
        axes = tuple(a for a in range(3) if self.flip[a])
        out = np.flip(canonical, axis=axes) if axes else canonical
        inv = tuple(int(np.argsort(self.perm)[a]) for a in range(3))
        return np.transpose(out, inv + tuple(range(3, canonical.ndim)))

    def to_dict(self) -> dict[str, Any]:
        return {"perm": list(self.perm), "flip": list(self.flip)}


@dataclass
class CTVolume:
    """A CT volume in HU on the canonical grid (see module docstring)."""

    hu: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray = field(default_factory=lambda: CANONICAL_DIRECTION.copy())
    metadata: dict[str, Any] = field(default_factory=dict)
    source_paths: list[str] = field(default_factory=list)
    source_format: str = "array"
    source_affine: np.ndarray | None = None
    source_shape: tuple[int, int, int] | None = None
    reorientation: Reorientation = field(default_factory=Reorientation)
    warnings: list[QCWarning] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.hu.ndim != 3:
            raise ValueError(f"CTVolume.hu must be 3-D (k, j, i), got shape {self.hu.shape}")
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if self.source_shape is None:
            self.source_shape = tuple(int(n) for n in self.hu.shape)
        if self.source_affine is None:
            self.source_affine = self.affine.copy()

    # -- geometry ----------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.hu.shape)

    @property
    def affine(self) -> np.ndarray:
        """4x4 matrix taking voxel index ``(i, j, k, 1)`` to LPS millimetres."""
        sk, sj, si = self.spacing
        m = np.eye(4)
        m[:3, :3] = self.direction @ np.diag([si, sj, sk])
        m[:3, 3] = self.origin
        return m

    def index_to_lps(self, kji: Any) -> np.ndarray:
        """LPS position (mm) of canonical voxel index/indices ``(k, j, i)`` (last axis of size 3)."""
        kji = np.asarray(kji, dtype=np.float64)
        ijk1 = np.concatenate([kji[..., ::-1], np.ones(kji.shape[:-1] + (1,))], axis=-1)
        return (ijk1 @ self.affine.T)[..., :3]

    def lps_to_index(self, xyz: Any) -> np.ndarray:
        """Canonical voxel index ``(k, j, i)`` (float) of LPS position(s) ``(x, y, z)``."""
        xyz = np.asarray(xyz, dtype=np.float64)
        xyz1 = np.concatenate([xyz, np.ones(xyz.shape[:-1] + (1,))], axis=-1)
        ijk = (xyz1 @ np.linalg.inv(self.affine).T)[..., :3]
        return ijk[..., ::-1]

    @property
    def napari_scale(self) -> tuple[float, float, float]:
        return self.spacing

    @property
    def napari_translate(self) -> tuple[float, float, float]:
        """World position of voxel (0, 0, 0) in napari's (I, P, L) millimetre axes."""
        x, y, z = self.origin
        return (-z, y, x)

    @property
    def extent_mm(self) -> tuple[float, float, float]:
        return tuple(float(n * s) for n, s in zip(self.shape, self.spacing))

    def to_source_grid(self, canonical: np.ndarray) -> np.ndarray:
        """Map an array on this volume's canonical grid back to the input's own voxel grid."""
        if canonical.shape[:3] != self.shape:
            raise ValueError(f"array shape {canonical.shape} does not match volume shape {self.shape}")
        return self.reorientation.invert(canonical)

    # -- identifiers -------------------------------------------------------------------------
    @property
    def series_uid(self) -> str | None:
        return self.metadata.get("SeriesInstanceUID")

    @property
    def study_uid(self) -> str | None:
        return self.metadata.get("StudyInstanceUID")

    @property
    def is_dicom(self) -> bool:
        return self.source_format == "dicom"

    def warn(self, code: str, message: str) -> None:
        if not any(w.code == code and w.message == message for w in self.warnings):
            self.warnings.append(QCWarning(code, message))

    def describe(self) -> str:
        z, y, x = self.shape
        sz, sy, sx = self.spacing
        src = self.source_paths[0] if self.source_paths else "<array>"
        return (
            f"CT {x}x{y}x{z} voxels, {sx:.2f}x{sy:.2f}x{sz:.2f} mm ({self.source_format}: {src}), "
            f"HU range [{float(self.hu.min()):.0f}, {float(self.hu.max()):.0f}], {len(self.warnings)} QC warning(s)"
        )
