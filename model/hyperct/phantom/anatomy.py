"""The chest outside the heart and great vessels: body wall, bones, lungs, diaphragm, upper abdomen.

Shapes are analytic functions of body millimetres (see ``grid``), so the same code paints the voxel
grid (slab by slab, a few slices at a time so the temporaries stay in cache) and answers point
queries (e.g. "is this point in the lung?" for growing the bronchial and vessel trees).

Cross-sections are described around the chest centre by the angle ``phi`` (0 = posterior midline,
pi = anterior midline, the same on both sides) and the radial depth below the skin; layers (skin,
subcutaneous fat, muscle, rib band, pleura) have angle- and level-dependent thicknesses, so the
thoracic cavity gets its kidney shape (paravertebral gutters either side of the spine).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hyperct.phantom._rng import stream
from hyperct.phantom.canvas import TISSUE, Canvas, gauss, sat, smoothstep
from hyperct.phantom.fields import SmoothField
from hyperct.phantom.params import Habitus

F32 = np.float32
HU = {
    "air": -1000.0,
    "skin": 25.0,
    "fat": -102.0,
    "muscle": 48.0,
    "cortical": 1150.0,
    "cartilage": 115.0,
    "disc": 85.0,
    "csf": 18.0,
    "liver": 58.0,
    "spleen": 46.0,
    "stomach_wall": 42.0,
    "fluid": 12.0,
    "table_skin": 180.0,
    "table_core": -920.0,
}

# mediastinum boundaries (x, mm) as a function of v = y / cavity depth (upper and lower thorax)
_MED_V = np.array([-1.2, -0.75, -0.45, -0.1, 0.25, 0.55, 0.8, 1.2], dtype=F32)
_MED_LO_UP = np.array([-3, -3, -13, -20, -20, -16, -11, -11], dtype=F32)
_MED_HI_UP = np.array([3, 3, 11, 18, 20, 27, 22, 22], dtype=F32)
_MED_LO_DN = np.array([-3, -3, -10, -16, -18, -19, -13, -13], dtype=F32)
_MED_HI_DN = np.array([3, 3, 9, 15, 20, 32, 26, 26], dtype=F32)


@dataclass(frozen=True)
class Landmarks:
    """Craniocaudal levels (body z, mm below the lung apex) and a few positions."""

    dome_r: float
    dome_l: float
    carina: float
    arch_top: float
    notch: float
    xiphoid: float
    rib1: float
    rib_pitch: float
    heart_top: float


class Body:
    """Analytic body of one phantom (everything but the heart, vessels and airways)."""

    def __init__(self, hab: Habitus, seed: int):
        self.h = hab
        rng = stream(seed, "body")
        L = hab.lung_len
        self.L = L
        carina = 0.33 * L + rng.normal(0, 4)
        self.lm = Landmarks(
            dome_r=L,
            dome_l=L + hab.dome_drop,
            carina=carina,
            arch_top=carina - 38.0 + rng.normal(0, 3),
            notch=0.10 * L + 8.0 + rng.normal(0, 3),
            xiphoid=0.92 * L + rng.normal(0, 6),
            rib1=-8.0 + rng.normal(0, 2),
            rib_pitch=hab.rib_pitch,
            heart_top=carina + 14.0,
        )
        self.rib_drop = float(3.3 * hab.rib_pitch * rng.normal(1.0, 0.06))
        self.rib_h = float(rng.uniform(10.0, 13.0))
        self.rib_t = float(rng.uniform(6.0, 8.0))
        self.liver_hu = float(np.clip(rng.normal(58, 7), 25, 70))
        self.fat_hu = float(rng.normal(HU["fat"], 5))
        self.muscle_hu = float(rng.normal(HU["muscle"], 4))
        self.stomach_gas = float(rng.uniform(0.1, 0.55))
        self.cartilage_calc = float(np.clip((hab.age - 45) / 40.0, 0.0, 1.0) * rng.uniform(0.3, 1.0))
        self.apex_k = float(rng.uniform(0.010, 0.016))
        self.breast = float(rng.uniform(12.0, 30.0) + 0.6 * hab.fat) if hab.sex == "F" else 0.0
        self.scap_top = float(rng.uniform(-22.0, -8.0))
        self.scap_len = float(rng.uniform(0.5, 0.6) * L + 20.0)
        self.tex = SmoothField(stream(seed, "lung_texture"), (-260, -220, -60), (260, 220, 420), 9.0)
        self.softtex = SmoothField(stream(seed, "soft_texture"), (-260, -220, -60), (260, 220, 420), 14.0)

    # ---------------------------------------------------------------- profiles along z
    def half_width(self, z):
        t = np.asarray(z, dtype=F32) / self.L
        return (
            F32(self.h.width / 2)
            * (0.87 + 0.13 * smoothstep(-0.25, 0.45, t))
            * (1 - 0.04 * smoothstep(1.0, 1.4, t))
        )

    def depth_ant(self, z):
        t = np.asarray(z, dtype=F32) / self.L
        return F32(self.h.depth_ant) * (0.74 + 0.26 * smoothstep(-0.2, 0.8, t))

    def depth_post(self, z):
        t = np.asarray(z, dtype=F32) / self.L
        return F32(self.h.depth_post) * (0.95 + 0.05 * smoothstep(0.0, 0.5, t))

    def fat_z(self, z):
        t = np.asarray(z, dtype=F32) / self.L
        return 0.8 + 0.35 * smoothstep(0.4, 1.3, t)

    def spine_y(self, z):
        """y of the vertebral-body centre."""
        t = np.asarray(z, dtype=F32) / self.L
        kyph = 6.0 * np.sin(np.clip(t, -0.2, 1.3) * np.pi / 1.3)
        return self.depth_post(z) - F32(self.h.spine_depth) + kyph

    def spine_r(self, z):
        t = np.asarray(z, dtype=F32) / self.L
        return 12.5 + 8.0 * smoothstep(-0.1, 1.3, t)

    # ---------------------------------------------------------------- cross-section geometry
    @staticmethod
    def polar(x, y):
        r = np.sqrt(x * x + y * y) + F32(1e-3)
        c2 = (x / r) ** 2
        s2 = 1.0 - c2
        phi = np.arccos(np.clip(y / r, -1.0, 1.0))  # 0 = posterior, pi = anterior
        return r, c2, s2, phi

    def body_radius(self, c2, s2, y, z):
        a = self.half_width(z)
        b = np.where(y < 0, self.depth_ant(z), self.depth_post(z))
        return 1.0 / np.sqrt(c2 / (a * a) + s2 / (b * b))

    def wall_parts(self, phi, z):
        """Thickness (mm) of subcutaneous fat and of the muscle layer at angle phi, level z."""
        h = self.h
        t = np.asarray(z, dtype=F32) / self.L
        a_fat = 0.72 + 0.45 * gauss(phi, 1.65, 0.8) + 0.1 * gauss(phi, 2.8, 0.5)
        fat = F32(h.fat) * self.fat_z(z) * a_fat
        w_pect = smoothstep(-0.15, 0.05, t) * (1.0 - smoothstep(0.45, 0.75, t))
        w_lat = 6.0 + 42.0 * (1.0 - smoothstep(-0.05, 0.5, t))
        pect = (16.0 if h.sex == "M" else 10.0) * h.muscle
        fat_post = F32(h.fat) * self.fat_z(z) * 0.72
        post = np.maximum(F32(h.spine_depth) - 2.0 - fat_post - 11.0 - 3.0 * h.muscle, 8.0)
        muscle = (
            3.0 * h.muscle
            + pect * gauss(phi, 2.55, 0.32) * w_pect
            + h.muscle * w_lat * gauss(phi, 1.15, 0.5)
            + post * gauss(phi, 0.0, 0.36)
        )
        return fat, muscle

    def spine_excl(self, x, y, z):
        """Signed distance-like (mm) to the spine's no-lung zone (positive outside)."""
        yv = self.spine_y(z)
        rv = self.spine_r(z)
        dy = y - yv
        d_body = np.sqrt(x * x + (dy * 1.12) ** 2) - rv - 3.0
        d_back = np.maximum(np.abs(x) - (rv * 0.9), -dy)  # behind the vertebral centre
        return np.minimum(d_body, d_back)

    def mediastinum(self, y, z):
        """x bounds of the mediastinum at (y, z): right lung where x < lo, left lung where x > hi."""
        t = np.asarray(z, dtype=F32) / self.L
        bb = np.where(y < 0, self.depth_ant(z), self.depth_post(z))
        v = np.asarray(y / bb, dtype=F32)
        w = smoothstep(0.3, 0.55, t)
        shp = np.broadcast(v, w).shape
        v = np.broadcast_to(v, shp).ravel()
        w = np.broadcast_to(w, shp).ravel()
        lo = (1 - w) * np.interp(v, _MED_V, _MED_LO_UP) + w * np.interp(v, _MED_V, _MED_LO_DN)
        hi = (1 - w) * np.interp(v, _MED_V, _MED_HI_UP) + w * np.interp(v, _MED_V, _MED_HI_DN)
        return lo.reshape(shp).astype(F32), hi.reshape(shp).astype(F32)

    def diaphragm(self, x, y):
        """Body z of the diaphragm surface at (x, y) (lung above, abdomen below)."""
        a = self.half_width(self.L) * 0.8
        b_a = self.depth_ant(self.L)
        b_p = self.depth_post(self.L)
        s = smoothstep(-25.0, 25.0, x)
        dome = (1 - s) * self.lm.dome_r + s * self.lm.dome_l
        u = (np.abs(x) - 0.45 * a) / (0.55 * a)
        v = np.where(y < 0, y / b_a, y / b_p)
        medial = np.clip(-u, 0, None)
        return (
            dome
            + 62.0 * np.clip(u, 0, None) ** 2
            + 30.0 * medial**2
            + 14.0 * u * u
            + 30.0 * v * v
            + 70.0 * np.clip(v - 0.05, 0, None) ** 2 * (1 + 0.5 * np.clip(u + 0.5, 0, 1.5))
        ).astype(F32)

    def apex(self, x, y):
        """Body z of the lung apex surface (lung below)."""
        xa = 0.24 * self.h.width / 2
        ya = 10.0
        return (self.apex_k * ((np.abs(x) - xa) ** 2 + 1.4 * (y - ya) ** 2)).astype(F32)

    def cavity_depth(self, X, Y, Z):
        """Radial depth (mm) inside the thoracic cavity wall (negative outside), and the angle phi."""
        r, c2, s2, phi = self.polar(X, Y)
        fat, mus = self.wall_parts(phi, Z)
        return self.body_radius(c2, s2, Y, Z) - r - (2.0 + fat + mus + 11.0), phi

    def sternum(self, z):
        """(y of the sternum's centre, half width, thickness) at level z (mm)."""
        lm = self.lm
        fat, _ = self.wall_parts(np.float32(np.pi), z)
        y_front = -self.depth_ant(z) + 2.0 + fat * 0.9 + 3.0
        manub = 1.0 - smoothstep(lm.notch + 40, lm.notch + 55, z)
        xiph = smoothstep(lm.xiphoid - 5, lm.xiphoid + 5, z)
        hw = 15.0 + 13.0 * manub * (1.0 - 0.3 * smoothstep(lm.notch, lm.notch + 40, z)) - 8.0 * xiph
        th = 10.0 + 4.0 * manub - 3.0 * xiph
        return y_front + th / 2, hw, th

    # ---------------------------------------------------------------- point queries
    def lung_points(self, pts: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """True for body-mm points (N, 3) inside the (heart-free) lungs, at least ``margin`` mm inside."""
        x, y, z = (np.asarray(pts[:, i], dtype=F32) for i in range(3))
        r, c2, s2, phi = self.polar(x, y)
        fat, mus = self.wall_parts(phi, z)
        wall = 2.0 + fat + mus + 11.0
        d_cav = self.body_radius(c2, s2, y, z) - r - wall
        lo, hi = self.mediastinum(y, z)
        ok = d_cav > margin
        ok &= (x < lo - margin) | (x > hi + margin)
        ok &= z > self.apex(x, y) + margin
        ok &= z < self.diaphragm(x, y) - margin
        ok &= self.spine_excl(x, y, z) > margin
        return ok

    # ---------------------------------------------------------------- painting
    def render(self, cv: Canvas) -> None:
        g = cv.grid
        x, y, z = g.x, g.y, g.z
        px, sz = g.px, g.spacing[0]
        ipx, isz = F32(1.0 / px), F32(1.0 / max(sz, px))
        h = self.h
        X = x[None, :]
        Y = y[:, None]
        # 2-D templates (same for every slice)
        r, c2, s2, phi = self.polar(X, Y)
        t_fat = (0.72 + 0.45 * gauss(phi, 1.65, 0.8) + 0.1 * gauss(phi, 2.8, 0.5)).astype(F32)
        t_pect = gauss(phi, 2.55, 0.32).astype(F32)
        t_lat = gauss(phi, 1.15, 0.5).astype(F32)
        t_post = gauss(phi, 0.0, 0.36).astype(F32)
        t_breast = gauss(phi, 2.42, 0.3).astype(F32)
        zd_s = (self.diaphragm(X, Y) * isz + 0.5).astype(F32)
        zap_s = (self.apex(X, Y) * isz - 0.5).astype(F32)
        z_apex_max = float(self.apex(X, Y).max())
        drop = (self.rib_drop * 0.5 * (1.0 - np.cos(phi))).astype(F32)
        lung_grad = (-22.0 + 48.0 * smoothstep(-0.8 * h.depth_ant, 0.9 * h.depth_post, Y)).astype(F32)
        Xs = (X * ipx).astype(F32)
        ant = (y < 0)[None, :, None]
        # 1-D profiles along z
        zz = z[:, None, None]
        tt = zz / self.L
        inv_a2 = (1.0 / self.half_width(zz) ** 2).astype(F32)
        inv_ba2 = (1.0 / self.depth_ant(zz) ** 2).astype(F32)
        inv_bp2 = (1.0 / self.depth_post(zz) ** 2).astype(F32)
        y_back = (self.depth_post(zz) * 0.94).astype(F32)
        fz = (F32(h.fat) * self.fat_z(zz)).astype(F32)
        w_pect = (
            (16.0 if h.sex == "M" else 10.0)
            * h.muscle
            * smoothstep(-0.15, 0.05, tt)
            * (1.0 - smoothstep(0.45, 0.75, tt))
        ).astype(F32)
        w_lat = (h.muscle * (6.0 + 42.0 * (1.0 - smoothstep(-0.05, 0.5, tt)))).astype(F32)
        w_breast = (self.breast * smoothstep(0.22, 0.42, tt) * (1.0 - smoothstep(0.62, 0.88, tt))).astype(F32)
        w_post = np.maximum(F32(h.spine_depth) - 2.0 - fz * 0.72 - 11.0 - 3.0 * h.muscle, 8.0).astype(F32)
        lo_all, hi_all = self.mediastinum(Y[None], zz)  # (nz, ny, 1)
        lo_s = (lo_all * ipx + 0.5).astype(F32)
        hi_s = (0.5 - hi_all * ipx).astype(F32)
        wall0 = F32(13.0 + 3.0 * h.muscle)
        self._render_table(cv)
        z_abd0 = float(self.diaphragm(X, Y).min()) - 2 * sz
        # spine window (the only place the lung needs the spine exclusion)
        yv_all = self.spine_y(z)
        rv_all = self.spine_r(z)
        sj = np.nonzero((y > float((yv_all - rv_all).min()) - 8) & (y < float((yv_all + rv_all).max()) + 40))[
            0
        ]
        si = np.nonzero(np.abs(x) < float(rv_all.max()) + 8)[0]
        for k0, k1 in cv.slabs():
            ks = slice(k0, k1)
            zs = z[ks][:, None, None]
            hu = cv.hu[ks]
            lab = cv.lab[ks]
            # ---- body wall
            ib2 = np.where(ant, inv_ba2[ks], inv_bp2[ks])
            R = c2 * inv_a2[ks]
            R += s2 * ib2
            np.sqrt(R, out=R)
            np.reciprocal(R, out=R)
            d_rad = R - r
            d = np.minimum(d_rad, y_back[ks] - Y)
            fat = t_fat * fz[ks]
            if self.breast > 0:
                bump = t_breast * w_breast[ks]
                R += bump
                d_rad += bump
                d = np.minimum(d_rad, y_back[ks] - Y)
                fat += bump
            mus = t_pect * w_pect[ks]
            mus += t_lat * w_lat[ks]
            mus += t_post * w_post[ks]
            d *= ipx
            a = sat(d + 0.5)
            hu += a * (HU["skin"] - hu)
            lab[a > 0.5] = TISSUE["skin"]
            a = sat(d + F32(0.5 - 2.0 * ipx))
            if self.breast > 0 and float(w_breast[ks].max()) > 1.0:
                gland = sat(1.3 * self.softtex(x, y, z[ks]) - 0.1) * sat(bump * F32(1.0 / 8.0))
                hu += a * (self.fat_hu + gland * (25.0 - self.fat_hu) - hu)
            else:
                hu += a * (self.fat_hu - hu)
            lab[a > 0.5] = TISSUE["fat"]
            d -= fat * ipx
            a = sat(d + F32(0.5 - 2.0 * ipx))
            hu += a * (self.muscle_hu - hu)
            lab[a > 0.5] = TISSUE["muscle"]
            # ---- thoracic cavity content
            wall = fat
            wall += mus
            wall += wall0
            d_cav = d_rad - wall
            a_cav = sat(d_cav * ipx + 0.5)
            a_med = sat(lo_s[ks] - Xs) + sat(Xs + hi_s[ks])
            a_lung = sat(zd_s - zs * isz) * a_med
            if float(zs.min()) < z_apex_max + 2 * sz:
                a_apx = sat(zs * isz - zap_s)
                a_lung *= a_apx
            else:
                a_apx = None
            sub = (slice(None), slice(sj[0], sj[-1] + 1), slice(si[0], si[-1] + 1))
            a_lung[sub] *= sat(self.spine_excl(X[:, sub[2]], Y[sub[1]], zs) * ipx + 0.5)
            lung_val = self.tex(x, y, z[ks])
            lung_val *= 9.0
            lung_val += F32(h.lung_hu) + lung_grad
            if a_apx is not None:
                soft = self.softtex(x, y, z[ks])
                neck = self.fat_hu + (self.muscle_hu - self.fat_hu) * sat(1.2 * soft + 0.2) * (1.0 - a_apx)
            else:
                neck = F32(self.fat_hu)
            interior = neck + a_lung * (lung_val - neck)
            hu += a_cav * (interior - hu)
            lab[a_cav > 0.5] = TISSUE["mediastinal_fat"]
            lung_frac = a_lung
            lung_frac *= a_cav
            lab[lung_frac > 0.5] = TISSUE["lung"]
            cv.lung[ks] = lung_frac
            # ---- diaphragm and abdomen
            if float(zs.max()) > z_abd0:
                self._render_abdomen(cv, k0, k1, X, Y, zs, self.diaphragm(X, Y), a_cav, ipx, isz)
            # ---- ribs and costal cartilage
            self._render_ribs(hu, lab, cv.lung[ks], R - wall + 1.0, r, phi, zs, drop, ipx, isz)
            # ---- scapulae, sternum, spine
            self._render_scapulae(hu, lab, R - wall, r, phi, Y, zs, ipx, isz)
            self._render_sternum(cv, k0, k1, zs, ipx, isz)
            self._render_spine(cv, k0, k1, zs, ipx, isz)

    # ------------------------------------------------------------------------------------------
    def _render_table(self, cv: Canvas) -> None:
        g = cv.grid
        X = g.x[None, :]
        Y = g.y[:, None]
        top = float(self.depth_post(np.linspace(-40, self.L + 120, 50)).max()) * 0.94 + 4.0
        yt = top - 0.0011 * X * X + 2.0
        ipx = 1.0 / g.px
        inside = sat((240.0 - np.abs(X)) * ipx + 0.5)
        skin1 = sat((Y - yt) * ipx + 0.5) * sat((yt + 2.5 - Y) * ipx + 0.5)
        core = sat((Y - yt - 2.5) * ipx + 0.5) * sat((yt + 14.0 - Y) * ipx + 0.5)
        skin2 = sat((Y - yt - 14.0) * ipx + 0.5) * sat((yt + 17.0 - Y) * ipx + 0.5)
        val = np.full(skin1.shape, HU["air"], dtype=F32)
        val += inside * (skin1 + skin2) * (HU["table_skin"] - HU["air"])
        val += inside * core * (HU["table_core"] - HU["air"])
        cv.hu[:] = val[None]
        cv.lab[:, (inside * (skin1 + skin2 + core)) > 0.5] = TISSUE["table"]

    def _render_abdomen(self, cv, k0, k1, X, Y, zs, zd, a_cav, ipx, isz) -> None:
        hu = cv.hu[k0:k1]
        lab = cv.lab[k0:k1]
        a_below = sat((zs - zd) * isz + 0.5) * a_cav
        if not np.any(a_below > 0):
            return
        # diaphragm muscle band, then the abdominal fat below it
        hu += a_below * (self.muscle_hu - hu)
        lab[a_below > 0.5] = TISSUE["muscle"]
        a_abd = sat((zs - zd - 4.5) * isz + 0.5) * a_cav
        hu += a_abd * (self.fat_hu - hu)
        lab[a_abd > 0.5] = TISSUE["fat"]
        cv.lung[k0:k1] *= 1.0 - a_below
        a = self.half_width(self.L)
        ba = self.depth_ant(self.L)
        bp = self.depth_post(self.L)
        # liver: right upper quadrant, left lobe across the midline anteriorly
        v = np.where(Y < 0, Y / ba, Y / bp)
        x_edge = -0.08 * a + 0.42 * a * (1.0 - smoothstep(-0.7, 0.25, v))
        a_liv = a_abd * sat((x_edge - X) * ipx + 0.5) * sat((zs - zd - 6.0) * isz + 0.5)
        hu += a_liv * (self.liver_hu - hu)
        lab[a_liv > 0.5] = TISSUE["liver"]
        # spleen: left, posterolateral
        ca, sa = np.cos(-0.6), np.sin(-0.6)
        dx, dy = X - 0.62 * a, Y - 0.42 * bp
        u1 = (ca * dx - sa * dy) / (0.15 * a)
        u2 = (sa * dx + ca * dy) / (0.34 * bp)
        u3 = (zs - (self.lm.dome_l + 62.0)) / 48.0
        q = np.sqrt(u1 * u1 + u2 * u2 + u3 * u3)
        a_spl = a_abd * sat((1.0 - q) * 18.0 * ipx + 0.5)
        hu += a_spl * (HU["spleen"] - hu)
        lab[a_spl > 0.5] = TISSUE["spleen"]
        # stomach: left upper quadrant, gas anteriorly (non-dependent)
        cx, cy, cz = 0.4 * a, -0.12 * ba, self.lm.dome_l + 46.0
        rx, ry, rz = 0.27 * a, 0.42 * ba, 52.0
        q = np.sqrt(((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2 + ((zs - cz) / rz) ** 2)
        rmin = min(rx, ry, rz)
        a_st = a_abd * sat((1.0 - q) * rmin * ipx + 0.5)
        a_in = a_abd * sat((1.0 - q) * rmin * ipx - 4.0 * ipx + 0.5)
        hu += a_st * (HU["stomach_wall"] - hu)
        lab[a_st > 0.5] = TISSUE["stomach"]
        level = cy - ry + 2 * ry * self.stomach_gas
        gas = sat((level - Y) * ipx + 0.5)
        content = HU["fluid"] + 18.0 * sat(self.softtex(cv.grid.x, cv.grid.y, cv.grid.z[k0:k1]) + 0.3)
        val = content + gas * (HU["air"] - content)
        hu += a_in * (val - hu)
        lab[(a_in > 0.5) & (gas > 0.5)] = TISSUE["bowel_gas"]

    def _render_ribs(self, hu, lab, lung, r_inner, r, phi, zs, drop, ipx, isz) -> None:
        t2 = self.rib_t / 2
        h2 = self.rib_h / 2
        dr = r - (r_inner + t2)
        band = np.abs(dr) < t2 + 1.0 / ipx
        idx = np.nonzero(band)
        if len(idx[0]) == 0:
            return
        dr = dr[idx]
        ph = np.broadcast_to(phi, band.shape)[idx]
        zr = np.broadcast_to(zs, band.shape)[idx] - self.lm.rib1 - np.broadcast_to(drop, band.shape)[idx]
        n = np.rint(zr / self.lm.rib_pitch)
        dz = zr - n * self.lm.rib_pitch
        # rib index dependent angular extent (anterior end) and cartilage start
        phi_max = np.interp(n, [-1, 0, 6, 7, 9, 10, 11, 12], [0, 3.0, 3.0, 2.85, 2.7, 1.9, 1.35, 0]).astype(
            F32
        )
        q = np.sqrt((dr / t2) ** 2 + (dz / h2) ** 2)
        a = sat((1.0 - q) * t2 * ipx + 0.5)
        a *= sat((ph - 0.22) * 30.0) * sat((phi_max - ph) * 30.0)
        a *= (n >= 0) & (n <= 11)
        if not np.any(a > 0):
            return
        bone = sat((2.45 - ph) * 8.0)  # bony rib up to ~140 deg, then cartilage
        inner = sat((1.0 - q) * t2 * ipx - 1.6 * ipx + 0.5)
        marrow = F32(self.h.trab_hu) * 0.9
        val_bone = HU["cortical"] + inner * (marrow - HU["cortical"])
        val = HU["cartilage"] + bone * (val_bone - HU["cartilage"])
        hv = hu[idx]
        hu[idx] = hv + a * (val - hv)
        lv = lab[idx]
        lv[(a > 0.5) & (bone > 0.5)] = TISSUE["cortical_bone"]
        lv[(a > 0.5) & (bone <= 0.5)] = TISSUE["cartilage"]
        lab[idx] = lv
        lung[idx] *= 1.0 - a

    def _render_scapulae(self, hu, lab, r_cav, r, phi, Y, zs, ipx, isz) -> None:
        """Shoulder blades: thin curved plates behind the ribs (posterolateral), thick lateral border
        and the scapular spine near the top."""
        z0, z1 = self.scap_top, self.scap_top + self.scap_len
        if float(zs.max()) < z0 or float(zs.min()) > z1:
            return
        rows = np.nonzero(Y[:, 0] > -10.0)[0]
        if len(rows) == 0:
            return
        sub = (slice(None), slice(rows[0], rows[-1] + 1), slice(None))
        u = np.clip((zs - z0) / (z1 - z0), 0.0, 1.0)  # 0 at the top, 1 at the inferior angle
        phi_med = 0.48 + 0.25 * u
        phi_lat = 1.35 - 0.5 * u
        rs = r_cav[sub] + F32(self.rib_t + 9.0)
        rr = r[sub[1:]]
        ph = phi[sub[1:]]
        lat = sat((ph - phi_lat + 0.09) * 14.0)  # thick lateral border
        thick = 2.2 + 3.5 * lat
        a = sat((thick * 0.5 - np.abs(rr - rs)) * ipx + 0.5)
        a *= sat((ph - phi_med) * rr * ipx + 0.5) * sat((phi_lat - ph) * rr * ipx + 0.5)
        a *= sat((zs - z0) * isz + 0.5) * sat((z1 - zs) * isz + 0.5)
        # the scapular spine: a ridge running outwards across the upper blade
        zsp = z0 + 0.18 * (z1 - z0)
        ridge = (
            sat((5.0 - np.abs(zs - zsp)) * isz + 0.5)
            * sat((rr - rs) * ipx + 0.5)
            * sat((rs + 16.0 - rr) * ipx + 0.5)
        )
        ridge *= sat((ph - phi_med - 0.1) * 8.0) * sat((phi_lat - ph) * 8.0)
        a = np.maximum(a, ridge)
        if not np.any(a > 0):
            return
        h = hu[sub]
        h += a * (HU["cortical"] * 0.75 - h)
        lb = lab[sub]
        lb[a > 0.5] = TISSUE["cortical_bone"]

    def _render_sternum(self, cv, k0, k1, zs, ipx, isz) -> None:
        lm = self.lm
        z0, z1 = lm.notch, lm.xiphoid + 18.0
        if float(zs.max()) < z0 - 5 or float(zs.min()) > z1 + 5:
            return
        g = cv.grid
        xs = g.x
        ys = g.y
        jx = np.nonzero(np.abs(xs) < 45)[0]
        jy = np.nonzero(ys < 0)[0]
        if len(jx) == 0 or len(jy) == 0:
            return
        bb = (slice(k0, k1), slice(jy[0], jy[-1] + 1), slice(jx[0], jx[-1] + 1))
        X = xs[bb[2]][None, None, :]
        Y = ys[bb[1]][None, :, None]
        yc, hw, th = self.sternum(zs)
        q = np.sqrt((X / hw) ** 4 + ((Y - yc) / (th / 2)) ** 2)
        a = sat((1.0 - q) * (th / 2) * ipx + 0.5)
        a *= sat((zs - z0) * isz + 0.5) * sat((z1 - zs) * isz + 0.5)
        if not np.any(a > 0):
            return
        inner = sat((1.0 - q) * (th / 2) * ipx - 1.5 * ipx + 0.5)
        val = HU["cortical"] * 0.85 + inner * (F32(self.h.trab_hu) * 0.85 - HU["cortical"] * 0.85)
        cv.paint(bb, a, val, TISSUE["cortical_bone"])

    def _render_spine(self, cv, k0, k1, zs, ipx, isz) -> None:
        g = cv.grid
        xs, ys = g.x, g.y
        yv = self.spine_y(zs)
        rv = self.spine_r(zs)
        ylo = float((yv - rv).min()) - 4
        yhi = float((yv + rv).max()) + 60
        jx = np.nonzero(np.abs(xs) < 42)[0]
        jy = np.nonzero((ys > ylo) & (ys < yhi))[0]
        if len(jx) == 0 or len(jy) == 0:
            return
        bb = (slice(k0, k1), slice(jy[0], jy[-1] + 1), slice(jx[0], jx[-1] + 1))
        X = xs[bb[2]][None, None, :]
        Y = ys[bb[1]][None, :, None]
        lm = self.lm
        p = lm.rib_pitch
        ph = (zs - lm.rib1) / p + 0.5
        frac = ph - np.floor(ph)  # 0..1 within a vertebral level (0 = top)
        disc_h = 5.0 / p
        a_level = sat((frac - disc_h / 2) * p * isz + 0.5) * sat((1 - disc_h / 2 - frac) * p * isz + 0.5)
        dy = Y - yv
        q = np.sqrt((X / rv) ** 2 + (dy / (rv * 0.88)) ** 2)
        a_col = sat((1.0 - q) * rv * ipx + 0.5)
        # disc (between bodies) then the vertebral body
        cv.paint(bb, a_col, HU["disc"], TISSUE["disc"])
        a_vb = a_col * a_level
        inner = sat((1.0 - q) * rv * ipx - 1.5 * ipx + 0.5)
        val = HU["cortical"] * 0.8 + inner * (F32(self.h.trab_hu) - HU["cortical"] * 0.8)
        cv.paint(bb, a_vb, val, TISSUE["trabecular_bone"])
        # posterior elements: canal, arch, spinous and transverse processes
        yc = yv + 0.88 * rv + 9.0
        qc = np.sqrt((X / 8.5) ** 2 + ((Y - yc) / 7.5) ** 2)
        upper = sat((0.62 - frac) * p * isz + 0.5)
        a_arch = sat((1.0 - np.sqrt((X / 15.0) ** 2 + ((Y - yc) / 13.0) ** 2)) * 13.0 * ipx + 0.5)
        a_arch *= sat((Y - yc + 4.0) * ipx + 0.5) * (0.35 + 0.65 * upper)
        a_sp = (
            sat((4.0 - np.abs(X)) * ipx + 0.5) * sat((Y - yc) * ipx + 0.5) * sat((yc + 40.0 - Y) * ipx + 0.5)
        )
        a_sp *= upper
        a_tp = (
            sat((30.0 - np.abs(X)) * ipx + 0.5)
            * sat((5.5 - np.abs(Y - yc + 1.0)) * ipx + 0.5)
            * sat((0.5 - frac) * p * isz + 0.5)
            * sat((frac - 0.1) * p * isz + 0.5)
        )
        a_post = np.maximum(np.maximum(a_arch, a_sp), a_tp)
        val = F32(self.h.trab_hu) * 1.2 + 350.0
        cv.paint(bb, a_post, val, TISSUE["cortical_bone"])
        a_can = sat((1.0 - qc) * 7.5 * ipx + 0.5)
        cv.paint(bb, a_can, HU["csf"], TISSUE["spinal_canal"])
