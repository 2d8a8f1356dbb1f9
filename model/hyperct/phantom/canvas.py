"""The arrays a phantom is painted into, and the painting helpers.

``hu`` (float32) holds Hounsfield units, ``lab`` (uint8) the tissue label of each voxel (``TISSUE``),
``lung`` (float32) the fraction of each voxel that is lung parenchyma (for lung findings).
Structures are painted in order with a soft coverage ``alpha`` in [0, 1] (linear partial-volume ramp
one pixel wide): ``hu <- hu + alpha * (value - hu)``; the label is set where ``alpha > 0.5``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hyperct.phantom.grid import Grid

TISSUE = {
    "air": 0,
    "skin": 1,
    "fat": 2,
    "muscle": 3,
    "cortical_bone": 4,
    "trabecular_bone": 5,
    "cartilage": 6,
    "lung": 7,
    "airway_lumen": 8,
    "airway_wall": 9,
    "lung_vessel": 10,
    "blood": 11,
    "myocardium": 12,
    "epicardial_fat": 13,
    "pericardium": 14,
    "mediastinal_fat": 15,
    "liver": 16,
    "spleen": 17,
    "stomach": 18,
    "bowel_gas": 19,
    "esophagus": 20,
    "lymph_node": 21,
    "thyroid": 22,
    "spinal_canal": 23,
    "disc": 24,
    "table": 25,
    "vessel_wall": 26,
}


def sat(a: np.ndarray) -> np.ndarray:
    """Clip to [0, 1] in place and return."""
    return np.clip(a, 0.0, 1.0, out=a)


def smoothstep(e0: float, e1: float, x):
    t = np.clip((np.asarray(x, dtype=np.float32) - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def gauss(x, mu: float, sigma: float):
    return np.exp(-0.5 * ((np.asarray(x, dtype=np.float32) - mu) / sigma) ** 2)


@dataclass
class Canvas:
    grid: Grid
    hu: np.ndarray
    lab: np.ndarray
    lung: np.ndarray
    aux: dict = field(default_factory=dict)

    @classmethod
    def empty(cls, grid: Grid) -> Canvas:
        shape = grid.shape
        return cls(
            grid=grid,
            hu=np.full(shape, -1000.0, dtype=np.float32),
            lab=np.zeros(shape, dtype=np.uint8),
            lung=np.zeros(shape, dtype=np.float32),
        )

    def slabs(self, k0: int = 0, k1: int | None = None):
        """Yield (k0, k1) chunks of a few slices, sized to stay in cache."""
        k1 = self.grid.shape[0] if k1 is None else k1
        step = max(1, (1 << 19) // (self.grid.shape[1] * self.grid.shape[2]))
        for a in range(k0, k1, step):
            yield a, min(k1, a + step)

    def paint_segments(
        self, segs, value, code: int | None = None, grow: float = 0.0, lung_keep: bool = False
    ):
        """Paint tubes ``segs`` (``tubes.Segments``) inside their own bounding box."""
        from hyperct.phantom.tubes import segments_alpha

        if not len(segs):
            return None
        lo, hi = segs.lo_hi(grow + 2 * self.grid.px)
        bb = self.grid.bbox(lo.min(0), hi.max(0))
        if bb is None:
            return None
        origin = tuple(s.start for s in bb)
        a = segments_alpha(
            self.grid,
            segs,
            np.zeros(tuple(s.stop - s.start for s in bb), np.float32),
            grow=grow,
            origin=origin,
        )
        self.paint(bb, a, value, code, lung_keep=lung_keep)
        return bb, a

    def paint(self, bb, alpha: np.ndarray, value, code: int | None = None, lung_keep: bool = False) -> None:
        """Paint ``value`` with coverage ``alpha`` into box ``bb`` (and label ``code`` where alpha > 0.5)."""
        h = self.hu[bb]
        h += alpha * (value - h)
        if code is not None:
            self.lab[bb][alpha > 0.5] = code
        if not lung_keep:
            self.lung[bb] *= 1.0 - alpha
