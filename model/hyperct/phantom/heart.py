"""The heart: four chambers, myocardium, epicardial fat, pericardium, coronary arteries.

Geometry lives in a heart frame: ``u`` runs from the base (atrioventricular plane) to the apex
(left, anterior, inferior), ``v`` points towards the right ventricle (right-anterior), ``w = u x v``.
Each chamber is an ellipsoid aligned with that frame (outer = cavity + wall), so all signed
distances share one rotation. The epicardial fat fills a smooth union of the chambers (so it
collects in the atrioventricular and interventricular grooves); the pericardium is a thin line on
its surface. Non-contrast CT: blood ~38 HU, myocardium ~52 HU, so chambers show only faintly, as on
a real non-contrast scan; what changes visibly with disease is their size and the heart's outline.

Chamber sizes come from :class:`HeartShape` (built from the latent cardiac state by
``hyperct.phantom.cardiac``); ``HeartShape()`` is a normal adult heart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from hyperct.phantom.anatomy import Body
from hyperct.phantom.canvas import TISSUE, Canvas, sat
from hyperct.phantom.params import Habitus
from hyperct.phantom.tubes import Segments

F32 = np.float32
HU_BLOOD = 38.0
HU_MYO = 52.0
HU_PERI = 30.0

CHAMBERS = ("lv", "rv", "la", "ra", "root", "rvot")


@dataclass(frozen=True)
class HeartShape:
    """Image-side cardiac parameters (mm, mL)."""

    lv_radius: float = 24.0  # LV cavity short-axis radius (= LVIDd / 2)
    lv_wall: float = 10.0
    lv_elong: float = 1.75  # LV cavity long / short axis
    rv_scale: float = 1.0  # RV cavity size factor
    la_volume: float = 45.0  # LA volume, mL
    ra_volume: float = 48.0  # RA volume, mL
    pa_diam: float = 24.0  # main pulmonary artery diameter, mm
    ivc_diam: float = 18.0
    scale: float = 1.0  # global heart scale (cardiomegaly)

    def to_dict(self) -> dict:
        return asdict(self)


def _ellipsoid_sd(la, lb, lc, c, r):
    """Approximate signed distance to an axis-aligned ellipsoid (centre c, radii r) in the frame."""
    x = (la - F32(c[0])) * F32(1.0 / r[0])
    y = (lb - F32(c[1])) * F32(1.0 / r[1])
    z = (lc - F32(c[2])) * F32(1.0 / r[2])
    k0 = np.sqrt(x * x + y * y + z * z)
    x *= F32(1.0 / r[0])
    y *= F32(1.0 / r[1])
    z *= F32(1.0 / r[2])
    k1 = np.sqrt(x * x + y * y + z * z) + F32(1e-6)
    return k0 * (k0 - 1.0) / k1


def smin(a, b, k: float):
    h = np.clip(k - np.abs(a - b), 0.0, None) * F32(1.0 / k)
    return np.minimum(a, b) - h * h * F32(k * 0.25)


class HeartGeom:
    """Geometry of one heart (frame, chambers) for given :class:`HeartShape`."""

    def __init__(self, body: Body, hab: Habitus, shape: HeartShape, fat_t: float):
        self.body = body
        self.shape = shape
        self.fat_t = fat_t
        lm = body.lm
        hs = hab.heart_scale
        self.hs = hs
        # frame: long axis ~45 deg left of the AP axis, tilted down by 35 deg (less when horizontal)
        az = np.radians(46.0)
        el = np.radians(35.0 - hab.heart_tilt)
        u = np.array([np.cos(el) * np.sin(az), -np.cos(el) * np.cos(az), np.sin(el)])
        v = np.cross(u, [0.0, 0.0, 1.0])
        v /= np.linalg.norm(v)
        w = np.cross(u, v)
        self.R = np.stack([u, v, w])  # rows: frame axes in body coordinates
        zc = lm.dome_l - 55.0 * hs
        yv = float(body.spine_y(zc))
        rv = float(body.spine_r(zc))
        hx = 16.0 + hab.heart_dx
        hy = yv - rv - 64.0 * hs + hab.heart_dy
        hz = float(body.diaphragm(np.float32(hx + 10.0), np.float32(hy))) - 47.0 * hs
        self.H = np.array([hx, hy, hz])  # centre of the ventricular mass (body mm)
        self.O = self.H
        self.chambers = self._chambers(shape)
        self.nominal = self._chambers(HeartShape())

    # ---------------------------------------------------------------- chambers (frame coords)
    def _chambers(self, s: HeartShape) -> dict:
        """Chamber ellipsoids: centre (frame coords), radii of the cavity (frame axes), wall."""
        hs = self.hs
        lvr = s.lv_radius * hs
        lva = lvr * s.lv_elong
        ch = {}

        def at(dx, dy, dz):  # body-mm offset from the ventricular centre -> frame coords
            return tuple(self.R @ (np.array([dx, dy, dz]) * hs))

        ch["lv"] = dict(c=at(31.0, 2.0, 6.0), r=(lva, lvr, lvr * 0.95), wall=s.lv_wall)
        rvs = s.rv_scale
        # the RV is sized from the *normal* LV so that LV disease does not move it
        ch["rv"] = dict(
            c=at(-12.0 - 6.0 * (rvs - 1), -27.0 - 10.0 * (rvs - 1), 10.0),
            r=(42.0 * hs * 0.88 * rvs**0.3, 17.0 * hs * rvs, 33.0 * hs * rvs**0.5),
            wall=4.0,
        )
        la = np.cbrt(3.0 * s.la_volume * 1000.0 / (4.0 * np.pi * 0.9 * 1.15 * 0.95))
        ch["la"] = dict(c=at(2.0, 36.0, -30.0), r=(0.9 * la, 1.15 * la, 0.95 * la), wall=2.5)
        ra = np.cbrt(3.0 * s.ra_volume * 1000.0 / (4.0 * np.pi * 1.0 * 0.95 * 1.1))
        ch["ra"] = dict(c=at(-50.0, 6.0, -12.0), r=(ra, 0.95 * ra, 1.1 * ra), wall=2.5)
        ch["root"] = dict(c=at(-6.0, 10.0, -40.0), r=(13.0 * hs, 13.0 * hs, 13.0 * hs), wall=2.0)
        ch["rvot"] = dict(c=at(4.0, -22.0, -36.0), r=(14.0 * hs, 13.0 * hs, 17.0 * hs), wall=3.0)
        if s.scale != 1.0:  # cardiomegaly: scale everything about the ventricular centre
            for d in ch.values():
                d["c"] = tuple(s.scale * np.asarray(d["c"]))
                d["r"] = tuple(np.asarray(d["r"]) * s.scale)
        return ch

    def to_frame(self, X, Y, Z):
        """Frame coordinates (a, b, c) of body-mm coordinates (broadcast arrays)."""
        R = self.R.astype(F32)
        dx = X - F32(self.O[0])
        dy = Y - F32(self.O[1])
        dz = Z - F32(self.O[2])
        la = dx * R[0, 0] + dy * R[0, 1] + dz * R[0, 2]
        lb = dx * R[1, 0] + dy * R[1, 1] + dz * R[1, 2]
        lc = dx * R[2, 0] + dy * R[2, 1] + dz * R[2, 2]
        return la, lb, lc

    def to_body(self, abc: np.ndarray) -> np.ndarray:
        return self.O + np.asarray(abc) @ self.R

    def sds(self, la, lb, lc, chambers: dict | None = None, names=CHAMBERS) -> dict:
        """Outer (myocardial surface) and inner (cavity) signed distances of each chamber."""
        ch = self.chambers if chambers is None else chambers
        out = {}
        for n in names:
            d = ch[n]
            inner = _ellipsoid_sd(la, lb, lc, d["c"], d["r"])
            out[n] = (inner - F32(d["wall"]), inner)
        return out

    @staticmethod
    def envelope(sd: dict, fat_t: float) -> np.ndarray:
        """Signed distance of the pericardial sac (smooth union of the chambers, grown by the fat)."""
        e = sd["lv"][0]
        for n in ("rv", "la", "ra", "root", "rvot"):
            e = smin(e, sd[n][0], 22.0)
        return e - F32(fat_t)

    @staticmethod
    def outer_wall(sd: dict) -> np.ndarray:
        """Signed distance of the myocardial surface: the union of every chamber's outer wall in ``sd``."""
        return np.minimum.reduce([outer for outer, _ in sd.values()])

    @staticmethod
    def cavities(sd: dict) -> dict:
        """Each chamber's cavity signed distance as painted: the LV's own; every other chamber's ends at
        the LV's outer wall (the septum and LV wall stay myocardium)."""
        lv_outside = -sd["lv"][0]
        return {n: inner if n == "lv" else np.maximum(inner, lv_outside) for n, (_, inner) in sd.items()}

    @classmethod
    def blood_pool(cls, sd: dict) -> np.ndarray:
        """Signed distance of all the blood the heart holds: the union of ``cavities``."""
        return np.minimum.reduce(list(cls.cavities(sd).values()))

    # ---------------------------------------------------------------- key points (body mm)
    def point(self, name: str, offset=(0.0, 0.0, 0.0), nominal: bool = True) -> np.ndarray:
        ch = self.nominal if nominal else self.chambers
        return self.to_body(np.asarray(ch[name]["c"]) + np.asarray(offset))

    def extent(self, margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Body-mm box around the heart (current and nominal shape)."""
        corners = []
        for ch in (self.chambers, self.nominal):
            for d in ch.values():
                c = np.asarray(d["c"])
                r = np.asarray(d["r"]) + d["wall"] + self.fat_t + 7.0
                for sgn in np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1])).reshape(3, -1).T:
                    corners.append(self.to_body(c + sgn * r))
        corners = np.array(corners)
        return corners.min(0) - margin, corners.max(0) + margin

    def contains_points(self, pts: np.ndarray, margin: float = 0.0) -> np.ndarray:
        la, lb, lc = self.to_frame(*(np.asarray(pts[:, i], dtype=F32) for i in range(3)))
        sd = self.sds(la, lb, lc, self.nominal)
        return self.envelope(sd, self.fat_t) < margin

    # ---------------------------------------------------------------- coronary arteries
    def coronaries(self) -> dict[str, Segments]:
        """Centre lines of the LAD, LCx and RCA (1.2-2 mm radius tubes in the grooves' fat)."""
        out = {}
        ch = self.chambers
        lv, rv = ch["lv"], ch["rv"]
        # LAD: along the anterior interventricular groove, base -> apex
        a_vals = np.linspace(lv["c"][0] - 0.75 * lv["r"][0], lv["c"][0] + 0.85 * lv["r"][0], 14)
        psi = np.linspace(0, 2 * np.pi, 181)[:-1]
        pts = []
        for a in a_vals:
            t = (a - lv["c"][0]) / (lv["r"][0] + lv["wall"])
            rad = np.sqrt(max(1e-3, 1 - t * t))
            bb = lv["c"][1] + (lv["r"][1] + lv["wall"]) * rad * np.cos(psi)
            cc = lv["c"][2] + (lv["r"][2] + lv["wall"]) * rad * np.sin(psi)
            aa = np.full_like(psi, a)
            sd_rv = self.sds(aa.astype(F32), bb.astype(F32), cc.astype(F32), names=("rv",))["rv"][0]
            s = np.sign(sd_rv)
            cross = np.nonzero(s != np.roll(s, -1))[0]
            if len(cross) == 0:
                continue
            best = cross[np.argmax(cc[cross])]  # the superior-anterior junction
            nrm = np.array([0.0, np.cos(psi[best]), np.sin(psi[best])])
            p = np.array([a, bb[best], cc[best]]) + nrm * (self.fat_t * 0.5 + 1.0)
            pts.append(p)
        if len(pts) >= 3:
            pts = np.array(pts)
            r = np.linspace(2.0, 1.1, len(pts))
            out["lad"] = Segments.polyline(self.to_body(pts), r)
        # LCx and RCA: arcs in the atrioventricular groove around the base
        for name, pair, rng_psi, cen_b in (
            ("lcx", ("la", "lv"), (np.radians(110), np.radians(290)), lv["c"][1]),
            ("rca", ("ra", "rv"), (np.radians(-80), np.radians(100)), rv["c"][1]),
        ):
            ps = np.linspace(rng_psi[0], rng_psi[1], 16)
            a0 = 1.0 * self.hs
            dirs = np.stack([np.zeros_like(ps), np.cos(ps), np.sin(ps)], axis=1)
            origin = np.array([a0, cen_b, 0.0])
            lo = np.zeros(len(ps))
            hi = np.full(len(ps), 120.0)
            target = self.fat_t * 0.5 + 1.0
            for _ in range(24):
                mid = 0.5 * (lo + hi)
                p = origin + dirs * mid[:, None]
                sd = self.sds(*(p[:, i].astype(F32) for i in range(3)), names=pair)
                d = np.minimum(sd[pair[0]][0], sd[pair[1]][0])
                inside = d < target
                lo = np.where(inside, mid, lo)
                hi = np.where(inside, hi, mid)
            p = origin + dirs * lo[:, None]
            out[name] = Segments.polyline(self.to_body(p), np.linspace(1.9, 1.2, len(p)))
        return out

    # ---------------------------------------------------------------- painting
    def render(self, cv: Canvas) -> dict:
        """Paint the heart (slab by slab); return its box."""
        g = cv.grid
        lo, hi = self.extent()
        bb = g.bbox(lo, hi)
        if bb is None:
            return {}
        ipx = F32(1.0 / g.px)
        fat_hu = cv.aux.get("fat_hu", -98.0)
        for k0, k1 in cv.slabs(bb[0].start, bb[0].stop):
            sb = (slice(k0, k1), bb[1], bb[2])
            Z, Y, X = g.coords(sb)
            la, lb, lc = self.to_frame(X, Y, Z)
            sd = self.sds(la, lb, lc)
            env = self.envelope(sd, self.fat_t)
            a_sac = sat(0.5 - env * ipx)
            if not a_sac.any():
                continue
            cv.paint(sb, a_sac, HU_PERI, TISSUE["pericardium"])
            a_fat = sat(0.5 - (env + 1.6) * ipx)
            cv.paint(sb, a_fat, fat_hu, TISSUE["epicardial_fat"], lung_keep=True)
            outer = self.outer_wall(sd)
            cv.paint(sb, sat(0.5 - outer * ipx), HU_MYO, TISSUE["myocardium"], lung_keep=True)
            cav = self.blood_pool(sd)
            cv.paint(sb, sat(0.5 - cav * ipx), HU_BLOOD, TISSUE["blood"], lung_keep=True)
        return {"bbox": bb}

    def nominal_shape(self) -> HeartShape:
        return replace(HeartShape())
