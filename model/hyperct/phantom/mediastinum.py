"""Great vessels, oesophagus, thyroid, clavicles and normal lymph nodes (tubes and ellipsoids).

Every structure is a polyline tube with a fat halo (mediastinal fat around it). Anchors on the
heart use its *nominal* geometry (a dilated chamber swallows the anchor instead of moving the
vessel), so cardiac findings change only the chambers, the pulmonary arteries (their calibre
follows the pulmonary pressure) and the inferior vena cava (its calibre follows the right atrial
pressure).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hyperct.phantom._rng import stream
from hyperct.phantom.anatomy import HU, Body
from hyperct.phantom.canvas import TISSUE, Canvas, sat
from hyperct.phantom.heart import HU_BLOOD, HeartGeom, HeartShape
from hyperct.phantom.lungtree import LungTrees
from hyperct.phantom.params import Habitus
from hyperct.phantom.tubes import Segments, segments_alpha

F32 = np.float32


@dataclass
class Tube:
    name: str
    segs: Segments
    value: float
    code: int
    halo: float = 2.5


class Mediastinum:
    def __init__(
        self, body: Body, hab: Habitus, heart: HeartGeom, trees: LungTrees, shape: HeartShape, seed: int
    ):
        rng = stream(seed, "mediastinum")
        self.body = body
        lm = body.lm
        s = hab.width / 330.0
        self.s = s

        def y_sp(z):  # anterior surface of the spine
            return float(body.spine_y(z) - body.spine_r(z))

        z_top = -95.0
        z_bot = lm.dome_l + 160.0
        self.r_asc = float(np.clip(14.5 + 0.06 * (hab.age - 60) + rng.normal(0, 1.0), 12.0, 19.5))
        r_asc = self.r_asc
        r_desc = r_asc - 3.5
        st_back = (
            -float(body.depth_ant(lm.arch_top)) + float(body.wall_parts(F32(np.pi), lm.arch_top)[0]) + 16.0
        )
        y_asc = st_back + 22.0 + r_asc
        root = heart.point("root")
        arch_c = lm.arch_top + r_asc - 1.0
        asc = [
            root,
            root + 0.5 * (np.array([-9.0, y_asc, lm.carina + 10.0]) - root) + np.array([-4.0, 0, 0]),
            np.array([-9.0, y_asc, lm.carina + 8.0]),
            np.array([-8.0, y_asc + 2.0, arch_c + 10.0]),
        ]
        arch = [
            np.array([-8.0, y_asc + 2.0, arch_c + 10.0]),
            np.array([-2.0, y_asc + 14.0, arch_c]),
            np.array([12.0, 0.5 * (y_asc + y_sp(arch_c)), arch_c - 1.0]),
            np.array([21.0, y_sp(arch_c + 14.0) - r_desc - 3.0, arch_c + 14.0]),
        ]
        desc_z = np.linspace(arch_c + 14.0, z_bot, 9)
        desc_x = np.interp(desc_z, [arch_c, lm.dome_l + 20.0, z_bot], [21.0, 10.0, 6.0])
        desc = [np.array([xx, y_sp(zz) - r_desc - 2.0, zz]) for xx, zz in zip(desc_x, desc_z)]
        self.aorta_pts = np.array(asc + arch[1:] + desc[1:])
        rad = np.concatenate(
            [
                [r_asc + 1.0, r_asc, r_asc, r_asc - 0.5],
                [r_asc - 1.0, r_asc - 2.0, r_desc + 0.5],
                np.linspace(r_desc, r_desc - 2.0, len(desc) - 1),
            ]
        )
        self.aorta = Segments.polyline(self.aorta_pts, rad)
        # arch branches
        p_bct = self.aorta_pts[4] + np.array([-2.0, -2.0, -r_asc + 3.0])
        p_cca = self.aorta_pts[5] + np.array([-2.0, -3.0, -r_asc + 4.0])
        p_sca = self.aorta_pts[5] + np.array([6.0, 6.0, -r_asc + 5.0])
        branches = Segments.concat(
            [
                Segments.polyline(
                    [p_bct, p_bct + [-6.0, 2.0, -25.0], p_bct + [-14.0, 6.0, -60.0]], [6.5, 6.0, 5.5]
                ),
                Segments.polyline([p_cca, p_cca + [4.0, 2.0, -30.0], p_cca + [9.0, 4.0, -70.0]], 4.2),
                Segments.polyline([p_sca, p_sca + [10.0, 4.0, -22.0], p_sca + [40.0 * s, 8.0, -45.0]], 5.0),
            ]
        )
        # veins
        svc_top = np.array([-8.0 - r_asc - 11.0, y_asc + 4.0, lm.arch_top - 6.0])
        ra = heart.point("ra")
        svc = Segments.polyline([svc_top, svc_top + [0, 4.0, 45.0], ra], [9.0, 9.5, 10.0])
        rbcv = Segments.polyline(
            [svc_top + [-32.0 * s, -6.0, -45.0], svc_top + [-8.0, -2.0, -20.0], svc_top], 6.5
        )
        lbcv = Segments.polyline(
            [
                np.array([52.0 * s, y_asc - 18.0, lm.arch_top - 42.0]),
                np.array([14.0, y_asc - 20.0, lm.arch_top - 22.0]),
                svc_top,
            ],
            6.0,
        )
        az_pts = [
            np.array([-7.0, y_sp(zz) + 2.0, zz]) for zz in np.linspace(lm.dome_r + 60.0, lm.carina - 4.0, 6)
        ]
        az_pts += [np.array([-14.0, trees.carina[1] - 2.0, lm.carina - 12.0]), svc_top + [2.0, 6.0, 36.0]]
        azygos = Segments.polyline(az_pts, 4.3)
        self.ivc_r0 = 9.0
        ivc_pts = [np.array([-20.0 * s, y_sp(zz) - 14.0, zz]) for zz in (z_bot, lm.dome_r + 25.0)]
        ivc_pts.append(ra + np.array([0.0, 4.0, 20.0]))
        ivc_pts.append(ra)
        self.ivc_pts = np.array(ivc_pts)
        # pulmonary arteries
        pb = np.array([9.0, trees.carina[1] - 14.0, lm.carina + 6.0])
        rvot = heart.point("rvot")
        self.pa_pts = {
            "trunk": np.array([rvot, 0.5 * (rvot + pb) + np.array([4.0, 0.0, 0.0]), pb]),
            "rpa": np.array(
                [pb, np.array([-14.0, trees.carina[1] - 12.0, lm.carina + 14.0]), trees.art_root["R"]]
            ),
            "lpa": np.array(
                [pb, np.array([28.0 * s, trees.carina[1] - 2.0, lm.carina + 2.0]), trees.art_root["L"]]
            ),
        }
        la = heart.point("la")
        pv = Segments.concat([Segments.polyline([trees.vein_root[sd], la], 6.5) for sd in ("R", "L")])
        # oesophagus: behind the trachea, in front of the spine, to the hiatus and the cardia
        ez = np.linspace(z_top, lm.dome_l + 8.0, 9)
        ex = np.interp(ez, [z_top, lm.carina, lm.dome_r - 20.0, lm.dome_l + 8.0], [-1.0, 2.0, 8.0, 24.0])
        ey = [y_sp(zz) - 9.0 - 12.0 * float(np.clip((zz - lm.dome_r + 40.0) / 50.0, 0, 1)) for zz in ez]
        e_pts = [np.array([a, b, c]) for a, b, c in zip(ex, ey, ez)]
        e_pts.append(e_pts[-1] + np.array([14.0, -14.0, 22.0]))
        self.eso_pts = np.array(e_pts)
        self.eso_r = 8.0
        self.eso_air = bool(rng.random() < 0.45)
        self.tubes = [
            Tube(
                "esophagus",
                Segments.polyline(self.eso_pts, self.eso_r),
                HU["muscle"] - 6.0,
                TISSUE["esophagus"],
                2.0,
            ),
            Tube("azygos", azygos, HU_BLOOD, TISSUE["blood"], 1.5),
            Tube("ivc", Segments.empty(), HU_BLOOD, TISSUE["blood"], 0.0),
            Tube("svc", Segments.concat([svc, rbcv, lbcv]), HU_BLOOD, TISSUE["blood"], 2.5),
            Tube("aorta", Segments.concat([self.aorta, branches]), HU_BLOOD + 4.0, TISSUE["blood"], 2.5),
            Tube("pulmonary_veins", pv, HU_BLOOD, TISSUE["blood"], 1.5),
            Tube("pa", Segments.empty(), HU_BLOOD, TISSUE["blood"], 2.5),
        ]
        self.set_shape(shape)
        # clavicles
        z_cl = lm.notch + 2.0
        y_front = -float(body.depth_ant(z_cl)) + float(body.wall_parts(F32(np.pi), z_cl)[0])
        self.clavicles = Segments.concat(
            [
                Segments.polyline(
                    [
                        [sg * 22.0, y_front + 6.0, z_cl],
                        [sg * 60.0 * s, y_front + 4.0, z_cl - 12.0],
                        [sg * 120.0 * s, y_front + 30.0, z_cl - 28.0],
                    ],
                    7.5,
                )
                for sg in (-1.0, 1.0)
            ]
        )
        # thyroid lobes beside the trachea, above the sternal notch
        ytr = float(trees.central_airways.p0[0][1])
        self.thyroid = [
            (np.array([sg * 17.0, ytr - 4.0, lm.notch - 32.0]), np.array([9.0, 11.0, 22.0])) for sg in (-1, 1)
        ]
        self.thyroid.append(
            (np.array([0.0, ytr - trees.tr_r - 5.0, lm.notch - 38.0]), np.array([14.0, 4.0, 6.0]))
        )
        # lymph-node stations (body mm) used by the normal nodes and by lymphadenopathy
        c = trees.carina
        self.stations = {
            "right_paratracheal": np.array([-14.0, c[1] - 6.0, lm.carina - 24.0]),
            "left_paratracheal": np.array([12.0, c[1] - 4.0, lm.carina - 30.0]),
            "aortopulmonary": np.array([20.0, c[1] - 8.0, lm.arch_top + 2.0 * r_asc + 8.0]),
            "prevascular": np.array([2.0, y_asc - r_asc - 10.0, lm.arch_top + 8.0]),
            "subcarinal": np.array([2.0, c[1] + 8.0, lm.carina + 18.0]),
            "right_hilar": trees.hilum["R"] + np.array([-6.0, 10.0, 8.0]),
            "left_hilar": trees.hilum["L"] + np.array([6.0, 10.0, 6.0]),
            "paraesophageal": np.array([-10.0, y_sp(lm.carina + 50.0) - 14.0, lm.carina + 50.0]),
            "right_axillary": np.array([-0.42 * hab.width, 10.0, lm.carina - 40.0]),
            "left_axillary": np.array([0.42 * hab.width, 10.0, lm.carina - 40.0]),
        }
        self.normal_nodes = []
        for name, p in self.stations.items():
            if "axillary" in name and rng.random() < 0.5:
                continue
            r = rng.uniform(2.5, 4.0)
            self.normal_nodes.append((p + rng.normal(0, 2.0, 3), np.array([r * 1.4, r, r * 1.2])))

    def set_shape(self, shape: HeartShape) -> None:
        """Set the calibre of the pulmonary arteries and the IVC from the cardiac state."""
        rt = shape.pa_diam / 2.0
        rb = 0.72 * rt
        pa = Segments.concat(
            [
                Segments.polyline(self.pa_pts["trunk"], [rt, rt, rt * 0.95]),
                Segments.polyline(self.pa_pts["rpa"], [rb, rb, rb * 0.85]),
                Segments.polyline(self.pa_pts["lpa"], [rb, rb, rb * 0.85]),
            ]
        )
        ivc = Segments.polyline(self.ivc_pts, shape.ivc_diam / 2.0)
        for t in self.tubes:
            if t.name == "pa":
                t.segs = pa
            elif t.name == "ivc":
                t.segs = ivc

    def tube(self, name: str) -> Tube:
        return next(t for t in self.tubes if t.name == name)

    # ---------------------------------------------------------------- painting
    def render(self, cv: Canvas) -> None:
        g = cv.grid
        fat = cv.aux.get("fat_hu", -100.0)
        allseg = Segments.concat([t.segs for t in self.tubes if len(t.segs)])
        lo, hi = allseg.lo_hi(8.0)
        bb = g.bbox(lo.min(0), hi.max(0))
        origin = tuple(s.start for s in bb)
        shape = tuple(s.stop - s.start for s in bb)
        halo = np.zeros(shape, F32)
        for t in self.tubes:
            if t.halo > 0 and len(t.segs):
                segments_alpha(g, t.segs, halo, grow=t.halo, origin=origin)
        below = self._below_diaphragm(cv, bb)
        halo *= 1.0 - below
        cv.paint(bb, halo, fat, TISSUE["mediastinal_fat"])
        for t in self.tubes:
            if not len(t.segs):
                continue
            a = segments_alpha(g, t.segs, np.zeros(shape, F32), origin=origin)
            cv.paint(bb, a, t.value, t.code)
            if t.name == "esophagus" and self.eso_air:
                lumen = Segments.polyline(self.eso_pts[2:-2], 2.2)
                a = segments_alpha(g, lumen, np.zeros(shape, F32), origin=origin)
                cv.paint(bb, a, HU["air"], TISSUE["bowel_gas"])
        self._render_small(cv)

    def _below_diaphragm(self, cv: Canvas, bb) -> np.ndarray:
        g = cv.grid
        Z, Y, X = g.coords(bb)
        zd = self.body.diaphragm(X, Y)
        return sat((Z - zd - 6.0) * F32(1.0 / g.px))

    def _render_small(self, cv: Canvas) -> None:
        # clavicles: cortex + marrow
        cv.paint_segments(self.clavicles, HU["cortical"] * 0.9, TISSUE["cortical_bone"])
        cv.paint_segments(self.clavicles.scaled(1.0, -2.0), 220.0, TISSUE["trabecular_bone"])
        for c, r in self.thyroid:
            paint_ellipsoid(cv, c, r, 95.0, TISSUE["thyroid"])
        for c, r in self.normal_nodes:
            paint_ellipsoid(
                cv, c, r, 38.0, TISSUE["lymph_node"], only_on=(TISSUE["mediastinal_fat"], TISSUE["fat"])
            )


def ellipsoid_alpha(cv: Canvas, c, r, rot: np.ndarray | None = None, bb=None):
    """(box, coverage) of an ellipsoid with centre ``c``, radii ``r`` (optionally rotated axes)."""
    g = cv.grid
    rr = float(np.max(r))
    if bb is None:
        bb = g.bbox(np.asarray(c) - rr, np.asarray(c) + rr, margin=g.px)
    if bb is None:
        return None, None
    Z, Y, X = g.coords(bb)
    dx, dy, dz = X - F32(c[0]), Y - F32(c[1]), Z - F32(c[2])
    if rot is not None:
        R = rot.astype(F32)
        dx, dy, dz = (dx * R[i, 0] + dy * R[i, 1] + dz * R[i, 2] for i in range(3))
    q = np.sqrt((dx / F32(r[0])) ** 2 + (dy / F32(r[1])) ** 2 + (dz / F32(r[2])) ** 2)
    a = sat((1.0 - q) * F32(min(r) / g.px) + 0.5)
    return bb, a


def paint_ellipsoid(cv: Canvas, c, r, value, code, only_on=None, rot=None) -> None:
    bb, a = ellipsoid_alpha(cv, c, r, rot)
    if bb is None:
        return
    if only_on is not None:
        ok = np.isin(cv.lab[bb], only_on)
        a = a * ok
    cv.paint(bb, a, value, code)
