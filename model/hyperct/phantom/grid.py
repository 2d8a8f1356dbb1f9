"""The voxel grid of a phantom and the maps between voxel indices, body millimetres and LPS.

Internal "body" coordinates (mm), used by every anatomy module:

* ``x``: patient right -> left (same direction as canonical axis ``i``);
* ``y``: anterior -> posterior (canonical axis ``j``);
* ``z``: superior -> inferior, measured from the lung apex (canonical axis ``k``).

``x = y = 0`` is the centre of the chest cross-section. LPS = ``(x, y, z_apex_lps - z)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    shape: tuple[int, int, int]  # (nz, ny, nx)
    spacing: tuple[float, float, float]  # (sz, sy, sx) mm
    x0: float  # body x (mm) of column 0
    y0: float  # body y (mm) of row 0
    z0: float  # body z (mm, below the apex) of slice 0
    z_apex_lps: float  # LPS z of the lung apex (body z = 0)

    @property
    def px(self) -> float:
        return float(self.spacing[2])

    @property
    def x(self) -> np.ndarray:
        return (self.x0 + np.arange(self.shape[2]) * self.spacing[2]).astype(np.float32)

    @property
    def y(self) -> np.ndarray:
        return (self.y0 + np.arange(self.shape[1]) * self.spacing[1]).astype(np.float32)

    @property
    def z(self) -> np.ndarray:
        return (self.z0 + np.arange(self.shape[0]) * self.spacing[0]).astype(np.float32)

    @property
    def origin_lps(self) -> tuple[float, float, float]:
        return (float(self.x0), float(self.y0), float(self.z_apex_lps - self.z0))

    def index_of(self, pts: np.ndarray) -> np.ndarray:
        """Fractional voxel indices (k, j, i) of body-mm points ``(..., 3)`` given as (x, y, z)."""
        pts = np.asarray(pts, dtype=np.float64)
        sz, sy, sx = self.spacing
        return np.stack(
            [(pts[..., 2] - self.z0) / sz, (pts[..., 1] - self.y0) / sy, (pts[..., 0] - self.x0) / sx],
            axis=-1,
        )

    def bbox(self, lo: np.ndarray, hi: np.ndarray, margin: float = 0.0) -> tuple[slice, slice, slice] | None:
        """Index slices (k, j, i) covering the body-mm box [lo, hi] (x, y, z) plus ``margin`` mm."""
        lo = np.asarray(lo, dtype=np.float64) - margin
        hi = np.asarray(hi, dtype=np.float64) + margin
        a = np.floor(self.index_of(lo)).astype(int)
        b = np.ceil(self.index_of(hi)).astype(int) + 1
        out = []
        for ax in range(3):
            s0 = max(0, min(a[ax], b[ax]))
            s1 = min(self.shape[ax], max(a[ax], b[ax]))
            if s1 <= s0:
                return None
            out.append(slice(int(s0), int(s1)))
        return tuple(out)

    def coords(self, bb: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable body-mm coordinate arrays (z, y, x) for the voxels of box ``bb``."""
        return (
            self.z[bb[0]][:, None, None],
            self.y[bb[1]][None, :, None],
            self.x[bb[2]][None, None, :],
        )
