"""The 18 conventional (radiological) findings, each a renderer ``f(scene, severity, rng) -> (mask, info)``.

Severity in (0, 1] scales extent and contrast. Sizes are chosen so that every finding stays visible
after the model's resampling to ~2.4 mm pixels: lesions span several such pixels, textures are
coarse (septal lines on a 15-25 mm lobular mesh, reticulation on a ~9 mm mesh with cysts, bronchial
walls 2-4 mm thick, mosaic patches of whole secondary-lobule clusters with ~100 HU contrast).

The cardiac-shape findings (cardiomegaly and the seven opportunistic ones) change the heart itself
and are rendered with the anatomy (``generator``); this module only gives cardiomegaly's mask.
"""

from __future__ import annotations

import numpy as np

from hyperct.phantom.canvas import TISSUE, gauss, sat
from hyperct.phantom.fields import voronoi
from hyperct.phantom.lungtree import LOBES
from hyperct.phantom.mediastinum import ellipsoid_alpha
from hyperct.phantom.scene import Edit, Scene
from hyperct.phantom.tubes import Segments, segments_alpha

F32 = np.float32
METAL = 3071.0
BONE_CODES = (TISSUE["cortical_bone"], TISSUE["trabecular_bone"], TISSUE["disc"], TISSUE["spinal_canal"])


def _seg_box(scene: Scene, segs: Segments, grow: float = 0.0):
    lo, hi = segs.lo_hi(grow + 2 * scene.grid.px)
    return scene.grid.bbox(lo.min(0), hi.max(0))


def _paint_segments(ed: Edit, scene: Scene, segs: Segments, value, grow: float = 0.0, weight=None):
    bb = _seg_box(scene, segs, grow)
    if bb is None:
        return None, None
    origin = tuple(s.start for s in bb)
    shape = tuple(s.stop - s.start for s in bb)
    a = segments_alpha(scene.grid, segs, np.zeros(shape, F32), grow=grow, origin=origin)
    if weight is not None:
        a *= weight(bb)
    ed.blend(bb, a, value)
    return bb, a


def _not_bone(scene: Scene):
    return lambda bb: ~np.isin(scene.canvas.lab[bb], BONE_CODES)


def _lung_weight(scene: Scene, bb, gain: float = 1.0) -> np.ndarray:
    w = scene.canvas.lung[bb] * F32(gain)
    return np.clip(w, 0.0, 1.0, out=w)


def _lung_point(scene: Scene, rng, margin: float, lobes=None, n: int = 1) -> np.ndarray:
    """Random points inside the lungs (``margin`` mm from the pleura, away from the heart)."""
    b = scene.body
    a = float(b.half_width(b.L))
    lo = np.array([-a, -float(b.depth_ant(b.L)), 0.0])
    hi = np.array([a, float(b.depth_post(b.L)), b.lm.dome_l + 60.0])
    out = []
    for _ in range(200):
        p = rng.uniform(lo, hi, size=(400, 3))
        ok = b.lung_points(p, margin=margin) & ~scene.heart.contains_points(p, margin=margin + 4.0)
        if lobes is not None:
            ok &= np.isin(scene.trees.lobe_of(p), [LOBES.index(x) for x in lobes])
        out.extend(p[ok])
        if len(out) >= n:
            break
    if len(out) < n:  # tiny lungs: relax the margin
        return _lung_point(scene, rng, margin * 0.5, lobes, n) if margin > 2 else np.zeros((n, 3))
    return np.array(out[:n])


# ------------------------------------------------------------------------------- devices
def medical_material(scene: Scene, sev: float, rng) -> tuple[np.ndarray, dict]:
    ed = Edit(scene)
    if sev >= 0.7:
        kinds = ["pacemaker", "sternotomy"]
    elif sev >= 0.4:
        kinds = [str(rng.choice(["sternotomy", "pacemaker", "port"]))]
    else:
        kinds = [str(rng.choice(["clips", "port", "sternotomy"]))]
    b, lm, med, heart = scene.body, scene.body.lm, scene.med, scene.heart
    W = scene.hab.width
    for kind in kinds:
        if kind == "sternotomy":
            zs = np.linspace(lm.notch + 18.0, lm.xiphoid - 10.0, int(rng.integers(5, 8)))
            rings = []
            for z in zs:
                yc, hw, th = (float(v) for v in b.sternum(np.float32(z)))
                t = np.linspace(0, 2 * np.pi, 17)
                pts = np.stack(
                    [
                        np.cos(t) * (hw + 2.5),
                        yc + np.sin(t) * (th / 2 + 2.0),
                        np.full_like(t, z) + 2.0 * np.sin(t),
                    ],
                    1,
                )
                rings.append(Segments.polyline(pts, 0.9))
                rings.append(
                    Segments.polyline([[0, yc - th / 2 - 3.0, z], [0, yc - th / 2 - 6.0, z + 1.0]], 1.6)
                )
            _paint_segments(ed, scene, Segments.concat(rings), METAL)
        elif kind == "pacemaker":
            sgn = 1.0 if rng.random() < 0.8 else -1.0
            z = lm.notch + 28.0
            fat, _ = b.wall_parts(np.float32(np.pi * 0.8), np.float32(z))
            c = np.array(
                [sgn * 0.27 * W, -float(b.depth_ant(np.float32(z))) * 0.93 + 2.0 + 0.5 * float(fat), z]
            )
            rot = np.eye(3)
            bb, a = ellipsoid_alpha(scene.canvas, c, np.array([24.0, 6.0, 26.0]), rot)
            if bb is not None:
                ed.blend(bb, a, 2600.0)
            svc = med.tube("svc").segs
            lead = [
                c,
                c + [-sgn * 30.0, 10.0, -12.0],
                svc.p0[0],
                svc.p1[1],
                heart.point("ra", nominal=True),
                heart.to_body(np.asarray(heart.chambers["rv"]["c"]) + np.array([20.0, 0, -6.0])),
            ]
            _paint_segments(ed, scene, Segments.polyline(lead, 1.1), 2600.0)
        elif kind == "port":
            z = lm.notch + 35.0
            fat, _ = b.wall_parts(np.float32(np.pi * 0.82), np.float32(z))
            c = np.array([-0.22 * W, -float(b.depth_ant(np.float32(z))) * 0.92 + 3.0 + 0.5 * float(fat), z])
            bb, a = ellipsoid_alpha(scene.canvas, c, np.array([14.0, 7.0, 14.0]))
            if bb is not None:
                ed.blend(bb, a, 260.0)
            bb, a = ellipsoid_alpha(scene.canvas, c + [0, 4.0, 0], np.array([12.0, 1.6, 12.0]))
            if bb is not None:
                ed.blend(bb, a, 2500.0)
            svc = med.tube("svc").segs
            cath = [c, c + [10.0, 6.0, -30.0], svc.p0[0] + [-4.0, 0, 0], svc.p1[0], svc.p1[1]]
            _paint_segments(ed, scene, Segments.polyline(cath, 1.4), 300.0)
        else:  # surgical clips: a cluster near the hilum / mediastinum or the axilla
            site = med.stations[
                str(
                    rng.choice(
                        ["right_hilar", "left_hilar", "aortopulmonary", "right_axillary", "subcarinal"]
                    )
                )
            ]
            n = int(rng.integers(4, 9))
            c = site + rng.normal(0, 9.0, size=(n, 3))
            d = rng.normal(size=(n, 3))
            d /= np.linalg.norm(d, axis=1, keepdims=True)
            clips = Segments(c - 3.0 * d, c + 3.0 * d, np.full(n, 0.9), np.full(n, 0.9))
            _paint_segments(ed, scene, clips, METAL)
    return ed.mask, {"devices": kinds}


# ------------------------------------------------------------------------------- calcification
def _plaques_along(path: Segments, n: int, rng, lengths, radius, bias: float) -> Segments:
    """Short calcified segments along a polyline (``bias`` > 1 favours its proximal part)."""
    seg_len = np.linalg.norm(path.p1 - path.p0, axis=1)
    cum = np.concatenate([[0], np.cumsum(seg_len)])
    total = cum[-1]
    out_p0, out_p1, out_r = [], [], []
    for _ in range(n):
        s0 = total * rng.random() ** bias
        ln = rng.uniform(*lengths)
        s1 = min(total, s0 + ln)
        pts = []
        for s in (s0, 0.5 * (s0 + s1), s1):
            i = int(np.clip(np.searchsorted(cum, s) - 1, 0, len(seg_len) - 1))
            t = (s - cum[i]) / max(seg_len[i], 1e-6)
            pts.append(path.p0[i] + t * (path.p1[i] - path.p0[i]))
        r = radius if np.isscalar(radius) else rng.uniform(*radius)
        out_p0 += [pts[0], pts[1]]
        out_p1 += [pts[1], pts[2]]
        out_r += [r, r]
    r = np.array(out_r)
    return Segments(np.array(out_p0), np.array(out_p1), r, r)


def arterial_wall_calcification(scene: Scene, sev: float, rng):
    ed = Edit(scene)
    aorta = scene.med.aorta
    n = 3 + int(round(22 * sev))
    centre = _plaques_along(aorta, n, rng, (4.0, 9.0 + 12.0 * sev), 0.0, bias=0.8)
    # move each plaque from the centre line onto the wall, at a random angle
    idx = np.array([int(np.argmin(np.linalg.norm(aorta.p0 - p, axis=1))) for p in centre.p0])
    t = aorta.p1[idx] - aorta.p0[idx]
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    ref = np.where(np.abs(t[:, 2:3]) < 0.9, np.array([[0, 0, 1.0]]), np.array([[1.0, 0, 0]]))
    e1 = np.cross(t, ref)
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = np.cross(t, e1)
    ang = np.repeat(rng.uniform(0, 2 * np.pi, n), 2)
    rad = aorta.r0[idx] - 0.8
    off = (np.cos(ang)[:, None] * e1 + np.sin(ang)[:, None] * e2) * rad[:, None]
    r = np.repeat(rng.uniform(1.0, 1.5 + 0.8 * sev, n), 2)
    plaques = Segments(centre.p0 + off, centre.p1 + off, r, r)
    _paint_segments(ed, scene, plaques, 700.0 + 400.0 * sev)
    return ed.mask, {"plaques": n}


def coronary_artery_wall_calcification(scene: Scene, sev: float, rng):
    ed = Edit(scene)
    cor = scene.heart.coronaries()
    names = [k for k in ("lad", "lcx", "rca") if k in cor]
    n = 2 + int(round(12 * sev))
    weights = np.array([0.5, 0.2, 0.3][: len(names)])
    who = rng.choice(len(names), size=n, p=weights / weights.sum())
    parts = []
    for k, name in enumerate(names):
        m = int(np.sum(who == k))
        if m:
            parts.append(_plaques_along(cor[name], m, rng, (3.0, 5.0 + 12.0 * sev), (1.3, 2.0), bias=1.8))
    _paint_segments(ed, scene, Segments.concat(parts), 550.0 + 450.0 * sev)
    return ed.mask, {"plaques": n, "arteries": sorted({names[i] for i in who})}


# ------------------------------------------------------------------------------- heart / mediastinum
def pericardial_effusion(scene: Scene, sev: float, rng):
    ed = Edit(scene)
    hg = scene.heart
    t = 5.0 + 17.0 * sev
    lo, hi = hg.extent(margin=t + 6.0)
    bb = scene.grid.bbox(lo, hi)
    Z, Y, X = scene.coords(bb)
    la, lb, lc = hg.to_frame(X, Y, Z)
    env = hg.envelope(hg.sds(la, lb, lc), hg.fat_t)
    dep = np.clip(0.5 + (Y - F32(hg.H[1])) / 90.0 + (Z - F32(hg.H[2])) / 120.0, 0.0, 1.0)
    tl = F32(t) * (0.55 + 0.8 * dep)
    ipx = F32(1.0 / scene.grid.px)
    a = sat((tl - env) * ipx + 0.5) * sat((env + 1.6) * ipx + 0.5)
    a *= _not_bone(scene)(bb)
    ed.blend(bb, a, 12.0)
    line = sat(1.0 - np.abs(env - tl - 0.8) * ipx) * F32(0.8)
    line *= _not_bone(scene)(bb)
    ed.blend(bb, line, 32.0)
    return ed.mask, {"thickness_mm": round(t, 1)}


def hiatal_hernia(scene: Scene, sev: float, rng):
    ed = Edit(scene)
    lm = scene.body.lm
    e = scene.med.eso_pts[-2]
    r = np.array([14.0 + 20.0 * sev, 12.0 + 14.0 * sev, 14.0 + 16.0 * sev])
    c = np.array([e[0] + 4.0, e[1] - 6.0, lm.dome_l - 4.0 - 0.7 * r[2]])
    bb, a = ellipsoid_alpha(scene.canvas, c, r)
    if bb is None:
        return ed.mask, {}
    a *= _not_bone(scene)(bb)
    ed.blend(bb, a, 45.0)
    _, a_in = ellipsoid_alpha(scene.canvas, c, r - 3.5, bb=bb)
    a_in *= _not_bone(scene)(bb)
    Z, Y, X = scene.coords(bb)
    gas_frac = rng.uniform(0.25, 0.6)
    level = c[1] - r[1] + 2 * r[1] * gas_frac
    gas = sat((F32(level) - Y) / F32(scene.grid.px) + 0.5)
    content = 18.0 + 14.0 * np.clip(scene.field(rng, bb, 6.0), -1, 1)
    ed.blend(bb, a_in, content + gas * (-1000.0 - content))
    return ed.mask, {"size_mm": [round(2 * v, 1) for v in r]}


def lymphadenopathy(scene: Scene, sev: float, rng):
    ed = Edit(scene)
    st = scene.med.stations
    central = [k for k in st if "axillary" not in k]
    k = 1 + int(round(3 * sev))
    names = list(rng.choice(central, size=min(k, len(central)), replace=False))
    if rng.random() < 0.25:
        names.append(str(rng.choice(["right_axillary", "left_axillary"])))
    sizes = []
    for name in names:
        short = 11.0 + 13.0 * sev + rng.normal(0, 1.5)
        r = np.array([short * 0.62, short * 0.5, short * 0.7])
        rng.shuffle(r)
        c = st[name] + rng.normal(0, 2.0, 3)
        bb, a = ellipsoid_alpha(scene.canvas, c, r)
        if bb is None:
            continue
        a *= _not_bone(scene)(bb)
        ed.blend(bb, a, 42.0)
        sizes.append(round(2 * float(r.min()), 1))
    return ed.mask, {"stations": names, "short_axis_mm": sizes}


# ------------------------------------------------------------------------------- lung parenchyma
def emphysema(scene: Scene, sev: float, rng):
    ed = Edit(scene)
    bb = scene.lung_box()
    Z, Y, X = scene.coords(bb)
    L = scene.body.L
    z_lim = F32(L * (0.4 + 0.5 * sev))
    wz = sat((z_lim - Z) / 40.0) * np.ones_like(Y)
    w = wz * _lung_weight(scene, bb)
    f = scene.field(rng, bb, 5.0)
    holes = sat((f - F32(1.15 - 0.85 * sev)) / 0.3)
    ed.blend(bb, w, F32(-(25.0 + 35.0 * sev)), mode="add")
    ed.blend(bb, holes * w, -985.0)
    info = {"upper_zone_to_mm": round(float(z_lim), 1)}
    if sev > 0.55:  # apical bullae
        nb = 1 + int(rng.integers(0, 3))
        pts = _lung_point(scene, rng, 8.0, n=8 * nb)
        pts = pts[np.argsort(pts[:, 2])][:nb]
        for p in pts:
            rr = rng.uniform(10.0, 14.0 + 12.0 * sev)
            bb2, a = ellipsoid_alpha(scene.canvas, p, np.array([rr, rr, rr]))
            if bb2 is not None:
                ed.blend(bb2, a * _lung_weight(scene, bb2, 2.0), -995.0)
        info["bullae"] = nb
    return ed.mask, info


def atelectasis(scene: Scene, sev: float, rng):
    ed = Edit(scene)
    bb = scene.lung_box()
    Z, Y, X = scene.coords(bb)
    d, phi = scene.cavity_depth(bb)
    L = scene.body.L
    sides = rng.random() < 0.6
    side_w = np.ones_like(X) if sides else ((X < 0) if rng.random() < 0.5 else (X >= 0)).astype(F32)
    f = scene.field(rng, bb, 14.0)
    T = F32(7.0 + 24.0 * sev) * gauss(phi, 0.0, 0.85) * sat((Z - F32(L * 0.55)) / 40.0) * (1.0 + 0.35 * f)
    a = sat((T - d) / 2.0) * side_w * _lung_weight(scene, bb, 1.5)
    ed.blend(bb, a, 22.0 + 10.0 * np.clip(f, -1, 1))
    info = {"dependent_band_mm": round(7.0 + 24.0 * sev, 1), "bilateral": bool(sides)}
    if rng.random() < 0.5:  # plate-like (linear) atelectasis in a lower lobe
        p = _lung_point(scene, rng, 12.0, lobes=["RLL", "LLL", "RML"])[0]
        rr = np.array([22.0 + 16.0 * sev, 2.8 + 1.4 * sev, 16.0 + 10.0 * sev])  # thin antero-posteriorly
        t = rng.uniform(-0.5, 0.5)
        rot = np.array([[np.cos(t), np.sin(t), 0.0], [-np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])
        bb2, a = ellipsoid_alpha(scene.canvas, p, rr, rot)
        if bb2 is not None:
            ed.blend(bb2, a * _lung_weight(scene, bb2, 1.5), 25.0)
        info["plate_like"] = [round(float(v), 1) for v in p]
    return ed.mask, info


def nodule_diameter_mm(sev: float) -> float:
    """The diameter of a phantom's first (largest) lung nodule at severity ``sev``: 8-25 mm."""
    return 8.0 + 17.0 * sev


def lung_nodule(scene: Scene, sev: float, rng):
    ed = Edit(scene)
    n = 1 if sev < 0.5 else int(rng.integers(1, 4))
    out = []
    for k in range(n):
        d = nodule_diameter_mm(sev) * (1.0 if k == 0 else rng.uniform(0.6, 0.9))
        r = d / 2
        p = _lung_point(scene, rng, r + 5.0)[0]
        bb = scene.grid.bbox(p - r * 1.3, p + r * 1.3, margin=scene.grid.px)
        if bb is None:
            continue
        Z, Y, X = scene.coords(bb)
        q = np.sqrt((X - F32(p[0])) ** 2 + (Y - F32(p[1])) ** 2 + (Z - F32(p[2])) ** 2) / F32(r)
        q += F32(0.1) * scene.field(rng, bb, 3.5)
        a = sat((1.0 - q) * F32(r / scene.grid.px) + 0.5)
        ed.blend(bb, a, 36.0)
        out.append({"centre_mm": [round(float(v), 1) for v in p], "diameter_mm": round(d, 1)})
    return ed.mask, {"nodules": out}


def lung_opacity(scene: Scene, sev: float, rng):
    ed = Edit(scene)
    bb = scene.lung_box()
    f = scene.field(rng, bb, 26.0)
    t = F32(1.0 - 0.9 * sev)
    a = sat((f - t) / 0.35) * _lung_weight(scene, bb, 1.5)
    tex = scene.field(rng, bb, 6.0)
    target = -650.0 + 90.0 * sev + 25.0 * tex
    ed.blend(bb, a, target, mode="max")
    return ed.mask, {"pattern": "ground glass"}


def pulmonary_fibrotic_sequela(scene: Scene, sev: float, rng):
    """Subpleural, basal reticulation (a fine irregular polygonal mesh) over hazy parenchyma, and
    honeycombing (clustered subpleural air cysts with thick walls) when more severe."""
    ed = Edit(scene)
    bb0 = scene.lung_box()
    L = scene.body.L
    z0 = L * (0.72 - 0.35 * sev)
    bb = _sub_box(bb0, int(np.floor((z0 - 25.0 - scene.grid.z0) / scene.grid.spacing[0])))
    if bb is None:
        return ed.mask, {}
    Z, Y, X = scene.coords(bb)
    d, phi = scene.cavity_depth(bb)
    D = F32(14.0 + 26.0 * sev)
    w = sat((D - d) / 5.0) * sat((Z - F32(z0)) / 25.0) * (0.4 + 0.6 * sat((2.3 - phi) * 2.0))
    w *= _lung_weight(scene, bb, 1.5)
    ed.blend(bb, w, F32(90.0 + 60.0 * sev), mode="add")
    gap, _ = _voronoi(scene, rng, bb, 10.0, step=2.2)
    jitter = scene.field(rng, bb, 5.0)
    thr = F32(1.4 + 1.0 * sev) * (1.0 + 0.3 * jitter)
    walls = sat((thr - gap) / 0.8)
    ed.blend(bb, walls * w, -80.0)
    info = {"subpleural_depth_mm": round(float(D), 1)}
    if sev > 0.35:  # honeycombing: the outermost cells become air cysts
        cyst = sat((gap - thr - 0.6) / 0.8) * sat((7.0 + 7.0 * sev - d) / 3.0)
        ed.blend(bb, cyst * w, -960.0)
        info["honeycombing"] = True
    return ed.mask, info


def pleural_effusion(scene: Scene, sev: float, rng):
    ed = Edit(scene)
    u = rng.random()
    sides = ["R", "L"] if u < 0.5 else (["R"] if u < 0.8 else ["L"])
    bb = scene.lung_box()
    Z, Y, X = scene.coords(bb)
    d, phi = scene.cavity_depth(bb)
    L = scene.body.L
    T = (
        F32(6.0 + 55.0 * sev)
        * (0.08 + 0.92 * gauss(phi, 0.0, 0.8))
        * (0.35 + 0.65 * sat((Z - F32(0.35 * L)) / (0.6 * L)))
    )
    side_w = np.zeros_like(X)
    if "R" in sides:
        side_w = side_w + (X < 0)
    if "L" in sides:
        side_w = side_w + (X >= 0)
    lw = _lung_weight(scene, bb, 3.0) * side_w
    fl = sat((T - d) / 1.5) * lw
    band = sat((T + 7.0 - d) / 1.5) * lw * F32(0.75)
    ed.blend(bb, band, 5.0)
    ed.blend(bb, fl, 10.0 + 4.0 * scene.field(rng, bb, 10.0))
    return ed.mask, {"sides": sides, "max_depth_mm": round(6.0 + 55.0 * sev, 1)}


def mosaic_attenuation_pattern(scene: Scene, sev: float, rng):
    """Geographic patches of whole secondary lobules (polygonal borders) that are darker (air
    trapping / hypoperfusion) than the rest of the lung."""
    ed = Edit(scene)
    bb = scene.lung_box()
    _, attr = _voronoi(scene, rng, bb, 20.0, step=4.0)
    zone = scene.field(rng, bb, 45.0)  # clusters of affected lobules
    p = F32(0.25 + 0.35 * sev)
    a = sat((p + 0.25 * zone - attr) / 0.05) * _lung_weight(scene, bb, 1.5)
    ed.blend(bb, a, F32(-(85.0 + 70.0 * sev)), mode="add")
    return ed.mask, {"contrast_hu": round(-(85.0 + 70.0 * sev), 1)}


def _voronoi(scene: Scene, rng, bb, cell: float, step: float | None = None):
    g = scene.grid
    return voronoi(rng, g.x[bb[2]], g.y[bb[1]], g.z[bb[0]], cell, step)


def _sub_box(bb, k0: int):
    """Box ``bb`` restricted to slices >= k0 (None if empty)."""
    k0 = max(bb[0].start, k0)
    if k0 >= bb[0].stop:
        return None
    return (slice(k0, bb[0].stop), bb[1], bb[2])


def _tree_airways(scene: Scene, min_r: float, lobes=None) -> Segments:
    parts = []
    for name, t in scene.trees.trees.items():
        if lobes is not None and name not in lobes:
            continue
        s = t.segments()
        parts.append(s.select(s.r1 >= min_r))
    return Segments.concat(parts)


def peribronchial_thickening(scene: Scene, sev: float, rng):
    ed = Edit(scene)
    segs = _tree_airways(scene, 1.3)
    extra = 1.2 + 2.0 * sev
    outer = Segments(segs.p0, segs.p1, segs.r0 + extra, segs.r1 + extra)
    lumen = Segments(
        segs.p0, segs.p1, np.maximum(0.82 * segs.r0 - 0.35, 0.6), np.maximum(0.82 * segs.r1 - 0.35, 0.6)
    )
    bb = _seg_box(scene, outer)
    origin = tuple(s.start for s in bb)
    shape = tuple(s.stop - s.start for s in bb)
    a_o = segments_alpha(scene.grid, outer, np.zeros(shape, F32), origin=origin)
    a_l = segments_alpha(scene.grid, lumen, np.zeros(shape, F32), origin=origin)
    w = _lung_weight(scene, bb, 3.0)
    ed.blend(bb, a_o * (1.0 - a_l) * w, 25.0)
    ed.blend(bb, a_l * w, -990.0)
    return ed.mask, {"wall_extra_mm": round(extra, 2), "bronchi": len(segs)}


def consolidation(scene: Scene, sev: float, rng):
    """Segmental to lobar airspace consolidation: the lung around one bronchial subtree (so the
    region is wedge-shaped, reaches the pleura and stops at the fissures), with air bronchograms."""
    ed = Edit(scene)
    lobe = str(rng.choice(list(LOBES), p=[0.15, 0.15, 0.3, 0.1, 0.3]))
    tree = scene.trees.trees.get(lobe)
    if tree is None:
        return ed.mask, {}
    lo_gen = 1 if sev > 0.6 else 2
    cand = np.nonzero((tree.gen >= lo_gen) & (tree.gen <= lo_gen + 1) & (tree.count > 12))[0]
    node = int(rng.choice(cand)) if len(cand) else 0
    inside = tree.subtree(node)
    s = tree.segments()
    sub = s.select(inside[s.node])
    grow = 9.0 + 9.0 * sev
    lo, hi = sub.lo_hi(grow + 4.0)
    bb = scene.grid.bbox(lo.min(0), hi.max(0))
    if bb is None:
        return ed.mask, {}
    origin = tuple(v.start for v in bb)
    shape = tuple(v.stop - v.start for v in bb)
    # a smooth envelope of the subtree: capsules around its branches, edges roughened
    env = segments_alpha(
        scene.grid,
        Segments(sub.p0, sub.p1, sub.r0 * 0 + grow, sub.r1 * 0 + grow),
        np.zeros(shape, F32),
        origin=origin,
    )
    f = scene.field(rng, bb, 10.0)
    a = sat((env - 0.5 + 0.25 * f) * 3.0)
    a *= scene.lobes(bb) == LOBES.index(lobe)
    a *= _lung_weight(scene, bb, 1.5)
    ed.blend(bb, a, 34.0 + 8.0 * np.clip(f, -1, 1))
    # air bronchograms: the bronchi that run through the consolidated region stay aerated
    br = sub.select(sub.r1 >= 0.8)
    lumen = Segments(br.p0, br.p1, np.maximum(0.8 * br.r0, 1.0), np.maximum(0.8 * br.r1, 1.0))
    a_l = segments_alpha(scene.grid, lumen, np.zeros(shape, F32), origin=origin)
    ed.blend(bb, a_l * a, -930.0)
    c = tree.centroid[node]
    return ed.mask, {"lobe": lobe, "segment_node": node, "centre_mm": [round(float(v), 1) for v in c]}


def bronchiectasis(scene: Scene, sev: float, rng):
    ed = Edit(scene)
    u = rng.random()
    lobes = (
        ["RLL", "LLL"]
        if u < 0.5
        else (["RLL"] if u < 0.65 else ["LLL"])
        if u < 0.8
        else ["RML", "RLL", "LLL"]
    )
    if rng.random() < 0.2 + 0.3 * sev:
        lobes = sorted(set(lobes) | {str(rng.choice(["RUL", "LUL"]))})
    segs = _tree_airways(scene, 0.9, lobes)
    segs = segs.select(segs.gen >= 1)
    fac = (1.6 + 1.2 * sev) * rng.uniform(0.85, 1.25, len(segs))
    rl0 = np.maximum(segs.r0 * fac, 1.6)
    rl1 = np.maximum(segs.r1 * fac, 1.6)
    wall = 1.0 + 0.8 * sev
    outer = Segments(segs.p0, segs.p1, rl0 + wall, rl1 + wall)
    lumen = Segments(segs.p0, segs.p1, rl0, rl1)
    bb = _seg_box(scene, outer)
    origin = tuple(s.start for s in bb)
    shape = tuple(s.stop - s.start for s in bb)
    a_o = segments_alpha(scene.grid, outer, np.zeros(shape, F32), origin=origin)
    a_l = segments_alpha(scene.grid, lumen, np.zeros(shape, F32), origin=origin)
    w = _lung_weight(scene, bb, 3.0)
    ed.blend(bb, a_o * w, 28.0)
    ed.blend(bb, a_l * w, -985.0)
    return ed.mask, {"lobes": lobes, "dilation": round(1.6 + 1.2 * sev, 2)}


def interlobular_septal_thickening(scene: Scene, sev: float, rng):
    """Thickened walls of the secondary pulmonary lobules: a polygonal network (15-22 mm cells) of
    2-4 mm lines, peripheral (Kerley B lines reach the pleura), basal when mild, diffuse when severe."""
    ed = Edit(scene)
    bb = scene.lung_box()
    Z, Y, X = scene.coords(bb)
    d, _ = scene.cavity_depth(bb)
    L = scene.body.L
    D = F32(22.0 + 30.0 * sev)
    zone = sat((D - d) / 6.0)
    if sev < 0.5:
        zone *= sat((Z - F32(L * 0.4)) / 40.0)
    gap, _ = _voronoi(scene, rng, bb, 20.0, step=3.5)
    thr = F32(1.5 + 1.0 * sev)
    lines = sat((thr - gap) / 0.8)
    ed.blend(bb, lines * zone * _lung_weight(scene, bb, 1.5), F32(-120.0 + 100.0 * sev))
    return ed.mask, {"peripheral_depth_mm": round(float(D), 1)}


RENDERERS = {
    "medical_material": medical_material,
    "arterial_wall_calcification": arterial_wall_calcification,
    "pericardial_effusion": pericardial_effusion,
    "coronary_artery_wall_calcification": coronary_artery_wall_calcification,
    "hiatal_hernia": hiatal_hernia,
    "lymphadenopathy": lymphadenopathy,
    "emphysema": emphysema,
    "atelectasis": atelectasis,
    "lung_nodule": lung_nodule,
    "lung_opacity": lung_opacity,
    "pulmonary_fibrotic_sequela": pulmonary_fibrotic_sequela,
    "pleural_effusion": pleural_effusion,
    "mosaic_attenuation_pattern": mosaic_attenuation_pattern,
    "peribronchial_thickening": peribronchial_thickening,
    "consolidation": consolidation,
    "bronchiectasis": bronchiectasis,
    "interlobular_septal_thickening": interlobular_septal_thickening,
}

# order in which findings are painted (later ones drawn over earlier ones where they overlap)
ORDER = (
    "mosaic_attenuation_pattern",
    "emphysema",
    "lung_opacity",
    "interlobular_septal_thickening",
    "pulmonary_fibrotic_sequela",
    "peribronchial_thickening",
    "bronchiectasis",
    "consolidation",
    "atelectasis",
    "lung_nodule",
    "pleural_effusion",
    "pericardial_effusion",
    "hiatal_hernia",
    "lymphadenopathy",
    "arterial_wall_calcification",
    "coronary_artery_wall_calcification",
    "medical_material",
)
