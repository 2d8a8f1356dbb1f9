"""Airways (trachea to sub-segmental bronchi), pulmonary arteries and veins, lobes and fissures.

Per lobe, attractor points are scattered through the lobe and a branching tree is grown from the
lobar bronchus (``tubes.grow_tree``). The same tree gives the bronchi (its first generations, down to
~2 mm outer radius, with walls ~0.2 r thick) and the pulmonary arteries (every generation down to
~0.6 mm, displaced sideways so artery and bronchus run side by side, as in a bronchovascular
bundle). The veins are a second tree per lung that drains towards the left atrium and so runs
between the bundles. Nothing here depends on the cardiac state or on any finding, so the trees are
identical whatever findings are switched on (tree roots sit at fixed, nominal positions).
"""

from __future__ import annotations

import numpy as np

from hyperct.phantom._rng import stream
from hyperct.phantom.anatomy import Body
from hyperct.phantom.canvas import TISSUE, Canvas, sat
from hyperct.phantom.grid import Grid
from hyperct.phantom.heart import HeartGeom
from hyperct.phantom.params import Habitus
from hyperct.phantom.tubes import Segments, Tree, grow_tree, segments_alpha, splat_segments

F32 = np.float32
LOBES = ("RUL", "RML", "RLL", "LUL", "LLL")
HU_VESSEL = 40.0
HU_AIRWAY_WALL = 10.0
HU_AIR = -995.0


class LungTrees:
    def __init__(self, body: Body, hab: Habitus, heart: HeartGeom, seed: int, density: float = 2.5):
        self.body = body
        self.hab = hab
        lm = body.lm
        s = hab.width / 330.0
        # trachea: midline, in front of the oesophagus, from above the scan to the carina
        z_car = lm.carina
        yv = float(body.spine_y(z_car))
        rv = float(body.spine_r(z_car))
        self.tr_r = 8.5 if hab.sex == "M" else 7.5
        y_car = yv - rv - 10.0 - self.tr_r - 4.0
        y_top = float(body.spine_y(-60.0) - body.spine_r(-60.0)) - 10.0 - self.tr_r - 8.0
        self.carina = np.array([-2.0, y_car, z_car])
        trachea = np.array(
            [[0.0, y_top, -90.0], [0.0, 0.5 * (y_top + y_car), 0.5 * (z_car - 90.0)], self.carina]
        )
        # hila (bronchial roots) and main bronchi
        self.hilum = {
            "R": np.array([-36.0 * s, y_car + 8.0, z_car + 20.0]),
            "L": np.array([38.0 * s, y_car + 12.0, z_car + 30.0]),
        }
        self.main_r = {"R": 6.8 * s, "L": 5.8 * s}
        mid_l = np.array([20.0 * s, y_car + 7.0, z_car + 14.0])
        self.central_airways = Segments.concat(
            [
                Segments.polyline(trachea, [self.tr_r, self.tr_r, self.tr_r * 0.95]),
                Segments.polyline([self.carina, self.hilum["R"]], [self.main_r["R"], self.main_r["R"]]),
                Segments.polyline([self.carina, mid_l, self.hilum["L"]], self.main_r["L"]),
            ]
        )
        # pulmonary artery roots (hilar), vein roots (at the nominal left atrium)
        self.art_root = {
            "R": self.hilum["R"] + np.array([2.0, -14.0, 4.0]),
            "L": self.hilum["L"] + np.array([4.0, 6.0, -14.0]),
        }
        la = heart.point("la")
        self.vein_root = {"R": la + np.array([-28.0 * s, 6.0, 6.0]), "L": la + np.array([30.0 * s, 6.0, 4.0])}
        self.trees: dict[str, Tree] = {}
        self.lobe_roots: dict[str, np.ndarray] = {}
        self.veins: dict[str, Tree] = {}
        n_pts = int(900 * density)
        rng_pts = stream(seed, "lung_points")
        rng_tree = stream(seed, "lung_tree")
        for side in ("R", "L"):
            pts = self._sample_lung(rng_pts, side, heart, n_pts * (5 if side == "R" else 4))
            lobe = self.lobe_of(pts)
            for name in LOBES:
                if name[0] != side:
                    continue
                p = pts[lobe == LOBES.index(name)]
                if len(p) < 8:
                    continue
                hil = self.hilum[side]
                root = hil + 0.18 * (p.mean(0) - hil)
                self.lobe_roots[name] = root
                r0 = self.main_r[side] * np.cbrt(
                    len(p) / max(1, np.sum(lobe < 3 if side == "R" else lobe >= 3))
                )
                self.trees[name] = grow_tree(root, p, r0 * 1.05, rng_tree, leaf=2, step=0.42, first_step=0.3)
            vp = self._sample_lung(rng_pts, side, heart, n_pts * (3 if side == "R" else 2))
            self.veins[side] = grow_tree(
                self.vein_root[side], vp, 6.5 * s, rng_tree, leaf=2, step=0.45, first_step=0.35
            )

    # ---------------------------------------------------------------- lobes and fissures
    def fissures(self, x, y, z):
        """Signed distances (mm, + = below/behind) to the oblique fissure and (right) the horizontal one."""
        lm = self.body.lm
        yb = float(self.body.depth_post(lm.carina))
        ya = -float(self.body.depth_ant(lm.dome_r)) * 0.45
        # oblique: from posterior at T4-T5 level down to the anterior diaphragm
        z_post = lm.carina - 22.0
        z_ant = lm.dome_r - 10.0
        slope = (z_ant - z_post) / (ya - yb)
        zf = z_post + (y - yb) * slope + 0.0004 * x * x
        obl = (z - zf) / np.sqrt(1.0 + slope * slope)
        hor = z - (lm.carina + 34.0 + 0.06 * (y - ya))
        return obl, hor

    def lobe_of(self, pts: np.ndarray) -> np.ndarray:
        x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
        obl, hor = self.fissures(x, y, z)
        right = x < 0
        lower = obl > 0
        out = np.where(right, np.where(lower, 2, np.where(hor > 0, 1, 0)), np.where(lower, 4, 3))
        return out

    def lobe_grid(self, cv: Canvas, bb=None) -> np.ndarray:
        g = cv.grid
        bb = bb or (slice(None),) * 3
        Z, Y, X = g.coords(bb)
        obl, hor = self.fissures(X, Y, Z)
        right = X < 0
        lower = obl > 0
        return np.where(right, np.where(lower, 2, np.where(hor > 0, 1, 0)), np.where(lower, 4, 3)).astype(
            np.uint8
        )

    def _sample_lung(self, rng, side, heart: HeartGeom, n: int) -> np.ndarray:
        b = self.body
        a = float(b.half_width(b.L)) + 10
        lo = np.array([-a if side == "R" else 0.0, -float(b.depth_ant(b.L)), 0.0])
        hi = np.array([0.0 if side == "R" else a, float(b.depth_post(b.L)), b.lm.dome_l + 80.0])
        out = []
        got = 0
        while got < n:
            p = rng.uniform(lo, hi, size=(3 * n, 3))
            ok = b.lung_points(p, margin=3.0) & ~heart.contains_points(p, margin=6.0)
            out.append(p[ok])
            got += int(ok.sum())
        return np.concatenate(out)[:n]

    # ---------------------------------------------------------------- segments
    def airway_segments(self, min_radius: float = 1.9) -> Segments:
        parts = [self.central_airways]
        for name, t in self.trees.items():
            side = name[0]
            seg = t.segments()
            seg = seg.select(seg.r1 >= min_radius)
            # connect the lobar root to the hilum
            stem = Segments.polyline([self.hilum[side], self.lobe_roots[name]], t.radius[0])
            parts += [stem, seg]
        return Segments.concat(parts)

    def artery_offsets(self, name: str) -> np.ndarray:
        t = self.trees[name]
        par = np.maximum(t.parent, 0)
        d = t.pos - t.pos[par]
        d[0] = t.pos[0] - self.hilum[name[0]]
        ref = np.array([0.35, 0.85, -0.4]) if name[0] == "R" else np.array([-0.35, 0.85, 0.4])
        n = np.cross(d, ref)
        n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-9
        return n * (2.0 * t.radius[:, None] + 0.8)

    def artery_segments(self) -> Segments:
        parts = []
        for name, t in self.trees.items():
            off = self.artery_offsets(name)
            seg = t.segments(offset=off)
            side = name[0]
            stem = Segments.polyline([self.art_root[side], t.pos[0] + off[0]], t.radius[0] * 1.1)
            parts += [stem, seg]
        return Segments.concat(parts)

    def vein_segments(self) -> Segments:
        return Segments.concat([t.segments() for t in self.veins.values()])

    # ---------------------------------------------------------------- painting
    def render_vessels(self, cv: Canvas) -> None:
        g = cv.grid
        segs = Segments.concat([self.artery_segments(), self.vein_segments()])
        thr = max(1.0 * g.px, 1.1)
        big = segs.r1 >= thr
        lo, hi = segs.lo_hi(2 * g.px)
        bb = g.bbox(lo.min(0), hi.max(0))
        origin = tuple(s.start for s in bb)
        shape = tuple(s.stop - s.start for s in bb)
        sub = Grid(shape, g.spacing, g.x[bb[2]][0], g.y[bb[1]][0], g.z[bb[0]][0], g.z_apex_lps)
        frac = splat_segments(sub, segs.select(~big))
        np.minimum(frac, 1.0, out=frac)
        segments_alpha(g, segs.select(big), out=frac, origin=origin)
        frac *= cv.lung[bb]
        cv.paint(bb, frac, HU_VESSEL, TISSUE["lung_vessel"], lung_keep=True)

    def render_airways(self, cv: Canvas) -> None:
        g = cv.grid
        segs = self.airway_segments(min_radius=max(1.9, 1.2 * g.px))
        lo, hi = segs.lo_hi(4.0)
        bb = g.bbox(lo.min(0), hi.max(0))
        if bb is None:
            return
        origin = tuple(s.start for s in bb)
        shape = tuple(s.stop - s.start for s in bb)
        outer = segments_alpha(g, segs, np.zeros(shape, F32), origin=origin)
        lumen_segs = Segments(segs.p0, segs.p1, 0.82 * segs.r0 - 0.35, 0.82 * segs.r1 - 0.35)
        inner = segments_alpha(g, lumen_segs, np.zeros(shape, F32), origin=origin)
        cv.paint(bb, outer, HU_AIRWAY_WALL, TISSUE["airway_wall"], lung_keep=True)
        cv.paint(bb, inner, HU_AIR, TISSUE["airway_lumen"], lung_keep=True)
        cv.aux["airway_bbox"] = bb
        cv.aux["airway_lumen"] = inner

    def render_fissures(self, cv: Canvas) -> None:
        g = cv.grid
        ipx = F32(1.0 / g.px)
        m = cv.lung > 0.01
        kk = np.nonzero(m.any(axis=(1, 2)))[0]
        if len(kk) == 0:
            return
        for k0, k1 in cv.slabs(int(kk[0]), int(kk[-1]) + 1):
            bb = (slice(k0, k1), slice(None), slice(None))
            Z, Y, X = g.coords(bb)
            obl, hor = self.fissures(X, Y, Z)
            a = sat(0.8 - np.abs(obl) * ipx) * F32(0.3)
            front = sat(-obl * ipx + 0.5) * (X < 0)
            a = np.maximum(a, sat(0.8 - np.abs(hor) * ipx) * F32(0.3) * front)
            a *= cv.lung[bb]
            h = cv.hu[bb]
            h += a * (-120.0 - h)
