"""Everything a finding renderer may look at: the anatomy (never the other findings).

A finding renderer gets the ``Scene`` (anatomy geometry + the painted canvas), its severity and its
own random stream, edits ``scene.canvas.hu`` through :class:`Edit` (which records the mask of every
voxel it touches) and returns that mask. Geometry comes only from the anatomy (labels, lung
fraction, trees, heart), never from the current HU values, so a finding's region does not depend on
which other findings are present; edits are point-wise, so the image outside the mask is exactly
what it would be without the finding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hyperct.phantom._rng import stream
from hyperct.phantom.anatomy import Body
from hyperct.phantom.canvas import Canvas
from hyperct.phantom.fields import SmoothField
from hyperct.phantom.grid import Grid
from hyperct.phantom.heart import HeartGeom
from hyperct.phantom.lungtree import LungTrees
from hyperct.phantom.mediastinum import Mediastinum
from hyperct.phantom.params import Habitus

F32 = np.float32


@dataclass
class Scene:
    seed: int
    hab: Habitus
    grid: Grid
    canvas: Canvas
    body: Body
    heart: HeartGeom
    trees: LungTrees
    med: Mediastinum
    heart_render: dict = field(default_factory=dict)
    lesion_variant: int = 0  # > 0: another draw of every finding's position/shape on the same anatomy
    _cache: dict = field(default_factory=dict)

    def rng(self, fid: str, *extra: int) -> np.random.Generator:
        name = "finding/" + fid if not self.lesion_variant else f"finding/{fid}/variant/{self.lesion_variant}"
        return stream(self.seed, name, *extra)

    def lung_box(self, side: str | None = None, margin: float = 4.0):
        """Index box of the lungs (both, or side 'R'/'L'), from the anatomy's lung fraction."""
        key = ("lungbox", side)
        if key not in self._cache:
            g = self.grid
            lung = self.canvas.lung
            if side is not None:
                half = g.x < 0 if side == "R" else g.x >= 0
                cols = np.nonzero(half)[0]
                lung = lung[:, :, cols[0] : cols[-1] + 1]
                off = cols[0]
            else:
                off = 0
            m = lung > 0.01
            kk = np.nonzero(m.any(axis=(1, 2)))[0]
            jj = np.nonzero(m.any(axis=(0, 2)))[0]
            ii = np.nonzero(m.any(axis=(0, 1)))[0]
            if len(kk) == 0:
                self._cache[key] = None
            else:
                self._cache[key] = (
                    slice(int(kk[0]), int(kk[-1]) + 1),
                    slice(int(jj[0]), int(jj[-1]) + 1),
                    slice(int(ii[0] + off), int(ii[-1] + off) + 1),
                )
        return self._cache[key]

    def coords(self, bb):
        return self.grid.coords(bb)

    def field(self, rng: np.random.Generator, bb, cell) -> np.ndarray:
        """A unit-variance smooth random field with correlation length ``cell`` mm on box ``bb``."""
        g = self.grid
        x, y, z = g.x[bb[2]], g.y[bb[1]], g.z[bb[0]]
        f = SmoothField(rng, (x[0], y[0], z[0]), (x[-1], y[-1], z[-1]), cell)
        return f(x, y, z)

    def cavity_depth(self, bb):
        Z, Y, X = self.coords(bb)
        return self.body.cavity_depth(X, Y, Z)

    def lobes(self, bb) -> np.ndarray:
        return self.trees.lobe_grid(self.canvas, bb)


class Edit:
    """Point-wise edits of the HU array that record the finding's mask."""

    def __init__(self, scene: Scene):
        self.cv = scene.canvas
        self.mask = np.zeros(scene.grid.shape, dtype=bool)

    def blend(self, bb, alpha: np.ndarray, value, mode: str = "lerp") -> None:
        """``hu <- hu + alpha (value - hu)`` in box ``bb`` ('max': never lower a voxel; 'add': add value*alpha)."""
        if bb is None:
            return
        h = self.cv.hu[bb]
        if mode == "lerp":
            h += alpha * (value - h)
        elif mode == "max":
            np.maximum(h, h + alpha * (value - h), out=h)
        elif mode == "add":
            h += alpha * value
        else:  # pragma: no cover
            raise ValueError(mode)
        self.mask[bb] |= alpha > 0
