"""Smooth random fields by separable upsampling of a coarse Gaussian lattice.

A field with correlation length ``cell`` mm is a coarse array of independent normals (one per
``cell`` mm) interpolated to the voxel grid with a cubic B-spline kernel, axis by axis as matrix
products (BLAS), so it costs a few milliseconds even for a 512x512x250 grid and can be evaluated on
any sub-box or z-slab. Values are normalised to zero mean and unit standard deviation.
"""

from __future__ import annotations

import numpy as np


def _bspline3(t: np.ndarray) -> np.ndarray:
    t = np.abs(t)
    out = np.zeros_like(t)
    m1 = t < 1
    m2 = (t >= 1) & (t < 2)
    out[m1] = 2.0 / 3.0 - t[m1] ** 2 + 0.5 * t[m1] ** 3
    out[m2] = (2.0 - t[m2]) ** 3 / 6.0
    return out


def _interp_matrix(coords: np.ndarray, start: float, cell: float, n_coarse: int) -> np.ndarray:
    u = (np.asarray(coords, dtype=np.float64) - start) / cell
    knots = np.arange(n_coarse, dtype=np.float64)
    return _bspline3(u[:, None] - knots[None, :]).astype(np.float32)


class SmoothField:
    """A zero-mean, unit-variance random field over the body-mm box ``lo``..``hi``."""

    # std of a cubic-B-spline interpolation of unit white noise (sum of squared weights, averaged)
    _NORM = 1.0 / np.sqrt(0.4793650793650794 * 0.4793650793650794 * 0.4793650793650794)

    def __init__(self, rng: np.random.Generator, lo, hi, cell: float | tuple[float, float, float]):
        cell = np.broadcast_to(np.asarray(cell, dtype=np.float64), (3,))
        self.lo = np.asarray(lo, dtype=np.float64) - 2 * cell
        span = np.asarray(hi, dtype=np.float64) + 2 * cell - self.lo
        self.n = np.maximum(4, np.ceil(span / cell).astype(int) + 1)
        self.cell = cell
        # coarse lattice indexed (z, y, x)
        self.coarse = rng.standard_normal((self.n[2], self.n[1], self.n[0])).astype(np.float32)
        self._cache: dict = {}

    def matrices(self, x: np.ndarray, y: np.ndarray, z: np.ndarray):
        ax = _interp_matrix(x, self.lo[0], self.cell[0], self.n[0])
        ay = _interp_matrix(y, self.lo[1], self.cell[1], self.n[1])
        az = _interp_matrix(z, self.lo[2], self.cell[2], self.n[2])
        return az, ay, ax

    def plane_stack(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The field interpolated in-plane: array (n_z_coarse, len(y), len(x)); cached per grid."""
        key = (len(x), float(x[0]), float(x[-1]), len(y), float(y[0]), float(y[-1]))
        if key not in self._cache:
            ax = _interp_matrix(x, self.lo[0], self.cell[0], self.n[0])
            ay = _interp_matrix(y, self.lo[1], self.cell[1], self.n[1])
            cz, cy, cx = self.coarse.shape
            u = (self.coarse.reshape(cz * cy, cx) @ ax.T).reshape(cz, cy, len(x))  # (cz, cy, nx)
            u = ay @ u.transpose(1, 0, 2).reshape(cy, cz * len(x))  # (ny, cz * nx)
            u = u.reshape(len(y), cz, len(x)).transpose(1, 0, 2)
            self._cache = {key: np.ascontiguousarray(u) * np.float32(self._NORM)}
        return self._cache[key]

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Field on the grid ``z x y x x`` (1-D coordinate vectors, mm) -> array (len z, len y, len x)."""
        u = self.plane_stack(x, y)
        az = _interp_matrix(z, self.lo[2], self.cell[2], self.n[2])
        cols = np.nonzero(az.any(axis=0))[0]
        if len(cols) == 0:
            return np.zeros((len(z), len(y), len(x)), dtype=np.float32)
        out = np.zeros((len(z), len(y), len(x)), dtype=np.float32)
        for c in range(int(cols[0]), int(cols[-1]) + 1):  # 4-6 coarse planes: cheaper than BLAS here
            out += az[:, c, None, None] * u[c]
        return out

    def at_points(self, pts: np.ndarray) -> np.ndarray:
        """Field at scattered body-mm points (N, 3) (x, y, z)."""
        pts = np.asarray(pts, dtype=np.float64)
        u = (pts - self.lo) / self.cell
        base = np.floor(u).astype(int) - 1
        out = np.zeros(len(pts), dtype=np.float64)
        for dz in range(4):
            wz = _bspline3(u[:, 2] - (base[:, 2] + dz))
            iz = np.clip(base[:, 2] + dz, 0, self.n[2] - 1)
            for dy in range(4):
                wy = _bspline3(u[:, 1] - (base[:, 1] + dy))
                iy = np.clip(base[:, 1] + dy, 0, self.n[1] - 1)
                for dx in range(4):
                    wx = _bspline3(u[:, 0] - (base[:, 0] + dx))
                    ix = np.clip(base[:, 0] + dx, 0, self.n[0] - 1)
                    out += wz * wy * wx * self.coarse[iz, iy, ix]
        return (out * self._NORM).astype(np.float32)


def _hat_matrix(coords: np.ndarray, start: float, h: float, n: int) -> np.ndarray:
    u = (np.asarray(coords, dtype=np.float64) - start) / h
    knots = np.arange(n, dtype=np.float64)
    return np.clip(1.0 - np.abs(u[:, None] - knots[None, :]), 0.0, None).astype(np.float32)


def upsample(coarse: np.ndarray, start, h: float, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of ``coarse`` (z, y, x lattice from ``start`` (x, y, z) with step ``h``)."""
    cz, cy, cx = coarse.shape
    ax = _hat_matrix(x, start[0], h, cx)
    ay = _hat_matrix(y, start[1], h, cy)
    az = _hat_matrix(z, start[2], h, cz)
    u = (coarse.reshape(cz * cy, cx).astype(np.float32) @ ax.T).reshape(cz, cy, len(x))
    u = (ay @ u.transpose(1, 0, 2).reshape(cy, cz * len(x))).reshape(len(y), cz, len(x)).transpose(1, 0, 2)
    out = np.zeros((len(z), len(y), len(x)), dtype=np.float32)
    for c in np.nonzero(az.any(axis=0))[0]:
        out += az[:, c, None, None] * u[c]
    return out


def voronoi(
    rng: np.random.Generator,
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    cell: float,
    step: float | None = None,
):
    """Random polygonal cells (~``cell`` mm across) on the grid ``z x y x x`` (1-D mm coordinates).

    Returns ``(gap, attr)``: ``gap`` = distance to the second-nearest minus the nearest cell seed
    (0 on the cell walls, growing towards cell centres), ``attr`` = a uniform random value per cell
    (soft at the walls). Computed on a lattice of ``step`` mm (default cell/5, k-d tree) and
    interpolated trilinearly.
    """
    from scipy.spatial import cKDTree

    step = float(step or cell / 5.0)
    lo = np.array([x[0], y[0], z[0]], dtype=np.float64) - step
    hi = np.array([x[-1], y[-1], z[-1]], dtype=np.float64) + step
    n = np.ceil((hi - lo) / cell).astype(int) + 3  # seed lattice (x, y, z), one jittered seed per cell
    origin = lo - cell
    idx = np.stack(np.meshgrid(*(np.arange(k) for k in n), indexing="ij"), axis=-1).reshape(-1, 3)
    seeds = origin + (idx + rng.uniform(0.1, 0.9, size=idx.shape)) * cell
    attr = rng.random(len(seeds))
    gx = np.arange(lo[0], hi[0] + step, step)
    gy = np.arange(lo[1], hi[1] + step, step)
    gz = np.arange(lo[2], hi[2] + step, step)
    P = np.stack(np.meshgrid(gz, gy, gx, indexing="ij"), axis=-1)[..., ::-1].reshape(-1, 3)  # (z, y, x) order
    d, i = cKDTree(seeds).query(P, k=2)
    shape = (len(gz), len(gy), len(gx))
    gap = (d[:, 1] - d[:, 0]).reshape(shape)
    a1 = attr[i[:, 0]].reshape(shape)
    start = (lo[0], lo[1], lo[2])
    return upsample(gap, start, step, x, y, z), upsample(a1, start, step, x, y, z)
