"""``generate``: one synthetic non-contrast chest CT with known findings, masks and labels.

Pipeline (each step has its own random stream, see ``_rng``):

1. patient habitus and scan geometry from the seed (``params``);
2. findings: drawn (``findings=None``, ``sampling``) or given; the latent cardiac state
   (``cardiac``) gives echo quantities, the opportunistic labels and the heart's image parameters;
3. anatomy painted into a float32 HU canvas (``anatomy``, ``lungtree``, ``mediastinum``,
   ``heart``), slab by slab where it can be;
4. conventional findings painted point-wise inside their own masks (``lesions``);
5. scanner noise (in-plane correlated), clipping to [-1024, 3071] HU.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from hyperct.findings import FINDING_IDS, catalogue
from hyperct.phantom import cardiac, lesions, sampling
from hyperct.phantom._rng import stream
from hyperct.phantom.anatomy import Body
from hyperct.phantom.canvas import TISSUE, Canvas, sat
from hyperct.phantom.grid import Grid
from hyperct.phantom.heart import HeartGeom, HeartShape
from hyperct.phantom.lungtree import LungTrees
from hyperct.phantom.mediastinum import Mediastinum
from hyperct.phantom.params import make_grid, sample_habitus, sample_scan
from hyperct.phantom.scene import Scene
from hyperct.phantom.tubes import Segments, segments_alpha
from hyperct.volume import CTVolume

GENERATOR_VERSION = "1.0"
F32 = np.float32
HU_MIN, HU_MAX = -1024.0, 3071.0
MANUFACTURER = "HyperCT synthetic phantom"
PATIENT_NAME = "PHANTOM^HYPERCT"


@dataclass
class Phantom:
    """A generated CT with ground truth. See ``generate``."""

    volume: CTVolume
    masks: dict[str, np.ndarray]
    labels: np.ndarray
    severities: dict[str, float]
    cardiac: dict[str, Any]
    seed: int
    spec: dict[str, Any]
    tissue: np.ndarray  # uint8 tissue label map (``canvas.TISSUE``), same grid
    info: dict[str, Any] = field(default_factory=dict)  # per-finding details (positions, sizes)

    @property
    def label_dict(self) -> dict[str, int]:
        return {fid: int(v) for fid, v in zip(FINDING_IDS, self.labels)}

    @property
    def present(self) -> list[str]:
        """Findings present in the image (ground truth, catalogue order)."""
        return [f for f in FINDING_IDS if f in self.severities]

    def tissue_mask(self, *names: str) -> np.ndarray:
        return np.isin(self.tissue, [TISSUE[n] for n in names])


def _normalise_findings(seed: int, findings) -> dict[str, float] | None:
    if findings is None:
        return None
    cat = catalogue()
    if isinstance(findings, str):
        findings = [f for f in findings.split(",") if f.strip()]
    if isinstance(findings, dict):
        items = dict(findings)
    else:
        items = {str(f).strip(): None for f in findings}
    out = {}
    for fid, sev in items.items():
        try:
            cat[fid]
        except KeyError:
            raise ValueError(f"unknown finding id {fid!r}; known ids: {', '.join(FINDING_IDS)}") from None
        if sev is None:
            sev = 0.3 + 0.7 * float(stream(seed, "severity/" + fid).random())
        sev = float(sev)
        if not (0.0 < sev <= 1.0) or not np.isfinite(sev):
            raise ValueError(f"severity of {fid!r} must be in (0, 1], got {sev}")
        out[fid] = round(sev, 4)
    return out


def _cardiac_state(seed: int, hab, requested: dict | None) -> tuple[cardiac.Echo, dict, dict]:
    """The echo quantities, the latent cardiac state and the conventional findings' severities of
    phantom ``seed`` (``requested``: ``_normalise_findings``' result; None = the seed's random draw)."""
    rng_c = stream(seed, "cardiac")
    if requested is None:
        echo, latent = cardiac.sample_population(rng_c, hab.sex)
        return echo, latent, sampling.conventional(stream(seed, "findings"), hab, latent)
    echo = cardiac.from_findings(rng_c, hab.sex, requested)
    return echo, {}, {k: v for k, v in requested.items() if k not in cardiac.CARDIAC_IDS}


def drawn_state(seed: int, findings: dict[str, float] | list[str] | None = None):
    """``(habitus, echo, conventional severities)`` of ``generate(seed, findings)``, its own steps
    without rendering anything (a few milliseconds)."""
    seed = int(seed)
    hab = sample_habitus(seed)
    echo, _, conv = _cardiac_state(seed, hab, _normalise_findings(seed, findings))
    return hab, echo, conv


def heart_of(seed: int, findings: dict[str, float] | list[str] | None = None) -> HeartShape:
    """The heart's image parameters (chamber sizes, wall, vessels) that ``generate(seed, findings)``
    renders, without rendering anything."""
    hab, echo, conv = drawn_state(seed, findings)
    return cardiac.heart_shape(echo, hab.bsa, conv.get("cardiomegaly", 0.0))


@dataclass(frozen=True)
class Anatomy:
    """What ``anatomy_of`` gives: the voxel grid, the heart and the mediastinum of a phantom."""

    grid: Grid
    heart: HeartGeom
    med: Mediastinum


def _anatomy(seed: int, hab, shape: HeartShape, tree_density: float):
    """Body, heart, lung trees and mediastinum of phantom ``seed`` (geometry only, nothing painted)."""
    body = Body(hab, seed)
    fat_t = float(np.clip(3.0 + 0.1 * hab.fat + 0.03 * (hab.age - 50), 2.5, 9.0))
    heart = HeartGeom(body, hab, shape, fat_t)
    trees = LungTrees(body, hab, heart, seed, density=tree_density)
    return body, heart, trees, Mediastinum(body, hab, heart, trees, shape, seed)


def anatomy_of(
    seed: int,
    findings: dict[str, float] | list[str] | None = None,
    *,
    matrix: int = 512,
    n_slices: int | None = None,
    tree_density: float = 2.5,
) -> Anatomy:
    """The grid, heart and mediastinum geometry that ``generate(seed, findings, matrix=..., n_slices=...)``
    paints, without painting (~0.25 s: the lung trees are drawn, the volume is not)."""
    seed = int(seed)
    hab = sample_habitus(seed)
    grid = make_grid(sample_scan(seed, hab, int(matrix), n_slices))
    _, heart, _, med = _anatomy(seed, hab, heart_of(seed, findings), tree_density)
    return Anatomy(grid=grid, heart=heart, med=med)


def generate(
    seed: int,
    findings: dict[str, float] | list[str] | None = None,
    *,
    matrix: int = 512,
    n_slices: int | None = None,
    labels_from_findings: bool = True,
    missing_labels: bool | None = None,
    noise: bool = True,
    tree_density: float = 2.5,
    lesion_variant: int = 0,
) -> Phantom:
    """Generate phantom ``seed``.

    ``findings``: ``None`` draws findings with realistic prevalence from the seed; a list switches
    those findings on at a severity drawn from the seed; a dict gives severities in (0, 1]; ``{}``
    is a normal CT of the same patient. ``matrix`` is the in-plane size (the field of view follows
    the patient, so 512 gives 0.6-0.9 mm pixels); ``n_slices`` fixes the slice count (the slice
    spacing then follows the patient's chest length; default: a clinical slice thickness, 100-300
    slices). Labels: 1 present / 0 absent; cardiac labels threshold the (noisy) echo quantities;
    ``missing_labels`` (default: only in random mode) blanks labels to -1 as in the paper's data;
    ``labels_from_findings=False`` gives an unlabelled scan (all -1). ``lesion_variant`` (> 0) redraws
    where and how each conventional finding is drawn (e.g. the side of an effusion) on the very same
    anatomy, noise and severities: variants of one seed differ only inside their findings' masks.
    """
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not 32 <= int(matrix) <= 1024:
        raise ValueError(f"matrix must be between 32 and 1024, got {matrix}")
    if int(lesion_variant) < 0:
        raise ValueError(f"lesion_variant must be >= 0, got {lesion_variant}")
    if n_slices is not None and not 8 <= int(n_slices) <= 1000:
        raise ValueError(f"n_slices must be between 8 and 1000, got {n_slices}")
    requested = _normalise_findings(seed, findings)
    random_mode = requested is None
    hab = sample_habitus(seed)
    scan = sample_scan(seed, hab, int(matrix), n_slices)
    grid = make_grid(scan)

    # -- findings and the cardiac state
    echo, latent, conv = _cardiac_state(seed, hab, requested)
    base_echo = cardiac.from_findings(stream(seed, "cardiac"), hab.sex, {})
    card_present = cardiac.severities(echo, hab.sex)
    severities = {**conv, **card_present}
    cm = conv.get("cardiomegaly", 0.0)
    shape = cardiac.heart_shape(echo, hab.bsa, cm)
    base_shape = cardiac.heart_shape(base_echo, hab.bsa, 0.0)

    # -- anatomy
    body, heart, trees, med = _anatomy(seed, hab, shape, tree_density)
    cv = Canvas.empty(grid)
    cv.aux["fat_hu"] = body.fat_hu
    body.render(cv)
    trees.render_fissures(cv)
    trees.render_vessels(cv)
    med.render(cv)
    trees.render_airways(cv)
    hr = heart.render(cv)
    cor = heart.coronaries()
    for segs in cor.values():
        cv.paint_segments(segs, 46.0, TISSUE["blood"])
    scene = Scene(
        seed=seed,
        hab=hab,
        grid=grid,
        canvas=cv,
        body=body,
        heart=heart,
        trees=trees,
        med=med,
        heart_render=hr,
        lesion_variant=int(lesion_variant),
    )

    masks: dict[str, np.ndarray] = {}
    info: dict[str, Any] = {}
    # -- cardiac-shape findings: masks where the chambers / vessels differ from the patient's normal
    struct_needed = set()
    for structs in cardiac.mask_structures(echo, hab.sex).values():
        struct_needed.update(structs)
    if cm > 0:
        struct_needed.add("heart")
    smask = _structure_masks(scene, shape, base_shape, struct_needed)
    for fid, structs in cardiac.mask_structures(echo, hab.sex).items():
        m = np.zeros(grid.shape, dtype=bool)
        for s in structs:
            m |= smask[s]
        masks[fid] = m
    if cm > 0:
        masks["cardiomegaly"] = smask["heart"]
        info["cardiomegaly"] = {"scale": round(shape.scale, 3)}

    # -- conventional findings, point-wise inside their masks
    for fid in lesions.ORDER:
        if fid in conv:
            m, inf = lesions.RENDERERS[fid](scene, conv[fid], scene.rng(fid))
            masks[fid] = m
            info[fid] = inf

    # -- scanner noise and clipping
    hu = cv.hu
    if noise:
        _add_noise(hu, scan.noise_sd, stream(seed, "noise"), cv)
    np.clip(hu, HU_MIN, HU_MAX, out=hu)

    # -- labels
    labels = np.zeros(len(FINDING_IDS), dtype=np.int8)
    measured = cardiac.measure(echo, stream(seed, "echo_measurement"))
    card_labels = cardiac.criteria(measured, hab.sex)
    for i, fid in enumerate(FINDING_IDS):
        if fid in cardiac.CARDIAC_IDS:
            labels[i] = int(card_labels[fid])
        else:
            labels[i] = int(fid in conv)
    use_missing = random_mode if missing_labels is None else bool(missing_labels)
    if use_missing:
        present = {fid: bool(labels[i] == 1) for i, fid in enumerate(FINDING_IDS)}
        for fid in sampling.missing_labels(stream(seed, "missing"), present):
            labels[FINDING_IDS.index(fid)] = -1
    if not labels_from_findings:
        labels[:] = -1

    spec = {
        "generator": "hyperct.phantom",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "findings": None if random_mode else dict(requested),
        "matrix": int(matrix),
        "n_slices": None if n_slices is None else int(n_slices),
        "labels_from_findings": bool(labels_from_findings),
        "missing_labels": missing_labels,
        "noise": bool(noise),
        "tree_density": float(tree_density),
        "lesion_variant": int(lesion_variant),
        "habitus": asdict(hab),
        "scan": asdict(scan),
        "severities": dict(severities),
    }
    card = {
        "latent": {k: round(float(v), 4) for k, v in latent.items()},
        "echo": echo.to_dict(),
        "echo_measured": measured.to_dict(),
        "heart_shape": shape.to_dict(),
        "mask_structures": {k: list(v) for k, v in cardiac.mask_structures(echo, hab.sex).items()},
        "sex": hab.sex,
        "bsa": hab.bsa,
    }
    vol = CTVolume(
        hu=hu,
        spacing=grid.spacing,
        origin=grid.origin_lps,
        metadata=_metadata(seed, hab, scan),
        source_format="phantom",
    )
    return Phantom(
        volume=vol,
        masks=masks,
        labels=labels,
        severities=severities,
        cardiac=card,
        seed=seed,
        spec=spec,
        tissue=cv.lab,
        info=info,
    )


def generate_from_spec(spec: dict) -> Phantom:
    """Regenerate a phantom from its ``spec`` (``Phantom.spec``)."""
    return generate(
        spec["seed"],
        spec.get("findings"),
        matrix=spec.get("matrix", 512),
        n_slices=spec.get("n_slices"),
        labels_from_findings=spec.get("labels_from_findings", True),
        missing_labels=spec.get("missing_labels"),
        noise=spec.get("noise", True),
        tree_density=spec.get("tree_density", 2.5),
        lesion_variant=spec.get("lesion_variant", 0),
    )


# ------------------------------------------------------------------------------------------
def _structure_masks(
    scene: Scene, shape: HeartShape, base: HeartShape, names: set[str]
) -> dict[str, np.ndarray]:
    """Voxels where each structure's disease changes the picture, plus the structure itself.

    For a chamber S: voxels whose heart painting differs when only S takes its diseased shape, plus
    changed voxels close to S (interactions through the pericardial envelope's smooth union), plus
    S itself and the coronary arteries that run along S. For the pulmonary artery and the IVC: the
    tube at the larger of its diseased and normal calibre, with its fat halo. Evaluated slab by slab.
    """
    from dataclasses import replace as _replace

    out: dict[str, np.ndarray] = {}
    if not names:
        return out
    g = scene.grid
    heart = scene.heart
    px = g.px
    near_mm = 24.0 + heart.fat_t + 3.0 * px  # the envelope's smooth union reaches ~22 mm
    hgeo_base = HeartGeom(scene.body, scene.hab, base, heart.fat_t)
    ref = (
        HeartGeom(scene.body, scene.hab, _replace(shape, scale=1.0), heart.fat_t)
        if "heart" in names
        else None
    )
    lo, hi = heart.extent(margin=6.0)
    lo2, hi2 = hgeo_base.extent(margin=6.0)
    bb = g.bbox(np.minimum(lo, lo2), np.maximum(hi, hi2))
    ipx = F32(1.0 / px)
    chambers = [n for n in ("lv", "rv", "la", "ra") if n in names]
    for n in names:
        out[n] = np.zeros(g.shape, dtype=bool)

    def alphas(sd: dict):
        env = heart.envelope(sd, heart.fat_t)
        outer = heart.outer_wall(sd)
        cav = heart.blood_pool(sd)
        return [
            sat(0.5 - env * ipx),
            sat(0.5 - (env + 1.6) * ipx),
            sat(0.5 - outer * ipx),
            sat(0.5 - cav * ipx),
        ], env

    def differ(a, b):
        d = a[0] != b[0]
        for u, v in zip(a[1:], b[1:]):
            d |= u != v
        return d

    if chambers or ref is not None:
        for k0, k1 in scene.canvas.slabs(bb[0].start, bb[0].stop):
            sb = (slice(k0, k1), bb[1], bb[2])
            Z, Y, X = g.coords(sb)
            la, lb, lc = heart.to_frame(X, Y, Z)
            bsd = heart.sds(la, lb, lc, hgeo_base.chambers)
            fsd = heart.sds(la, lb, lc, heart.chambers)
            base_al, _ = alphas(bsd)
            full_al, full_env = alphas(fsd)
            total = differ(full_al, base_al)
            for name in chambers:
                ssd = {n: (fsd[n] if n == name else bsd[n]) for n in bsd}
                sub = differ(alphas(ssd)[0], base_al)
                near = (np.minimum(fsd[name][0], bsd[name][0]) < near_mm) & total
                out[name][sb] = sub | near | (fsd[name][0] < px)
            if ref is not None:  # cardiomegaly: the heart vs the same heart at normal scale
                ref_al, _ = alphas(heart.sds(la, lb, lc, ref.chambers))
                out["heart"][sb] = differ(full_al, ref_al) | (full_env < 0)
    base_cor = hgeo_base.coronaries()
    cur_cor = heart.coronaries()
    cor_dep = {
        "lv": ("lad", "lcx"),
        "rv": ("lad", "rca"),
        "la": ("lcx",),
        "ra": ("rca",),
        "heart": ("lad", "lcx", "rca"),
    }
    for name in names:
        m = out[name]
        if name in ("pa", "ivc"):
            tube = scene.med.tube(name).segs
            if name == "pa":
                r_cur, r_base = shape.pa_diam / 2, base.pa_diam / 2
            else:
                r_cur, r_base = shape.ivc_diam / 2, base.ivc_diam / 2
            f = max(r_cur, r_base) / max(r_cur, 1e-3)
            grown = Segments(tube.p0, tube.p1, tube.r0 * f, tube.r1 * f)
            _or_segments(m, g, grown, scene.med.tube(name).halo + 1.5 * px)
            continue
        # coronary arteries that run along this structure move with it
        sets = [cur_cor, base_cor] if name != "heart" else [cur_cor, ref.coronaries()]
        for cset in sets:
            for cname in cor_dep[name]:
                if cname in cset:
                    _or_segments(m, g, cset[cname], px)
    return out


def _or_segments(m: np.ndarray, g, segs: Segments, grow: float) -> None:
    lo, hi = segs.lo_hi(grow + 2 * g.px)
    bb = g.bbox(lo.min(0), hi.max(0))
    if bb is None:
        return
    origin = tuple(s.start for s in bb)
    a = segments_alpha(g, segs, np.zeros(tuple(s.stop - s.start for s in bb), F32), grow=grow, origin=origin)
    m[bb] |= a > 0


def _add_noise(hu: np.ndarray, sd: float, rng: np.random.Generator, cv: Canvas) -> None:
    """In-plane correlated noise (uniform white noise smoothed by [1 2 1]/4 along rows and columns)."""
    scale = F32(sd / 0.10825)
    for k0, k1 in cv.slabs():
        n = rng.random((k1 - k0, hu.shape[1] + 2, hu.shape[2] + 2), dtype=F32)
        n -= 0.5
        a = n[:, :, :-2] + 2.0 * n[:, :, 1:-1] + n[:, :, 2:]
        b = a[:, :-2] + 2.0 * a[:, 1:-1] + a[:, 2:]
        b *= scale * F32(1.0 / 16.0)
        hu[k0:k1] += b


def _metadata(seed: int, hab, scan) -> dict[str, Any]:
    from pydicom.uid import generate_uid

    date = _dt.date(2021, 1, 4) + _dt.timedelta(days=seed % 1400)
    t = 8 * 3600 + (seed * 7919) % (9 * 3600)
    return {
        "PatientName": PATIENT_NAME,
        "PatientID": f"PHANTOM-{seed:08d}",
        "PatientSex": hab.sex,
        "PatientAge": f"{hab.age:03d}Y",
        "PatientBirthDate": f"{date.year - hab.age}0101",
        "StudyInstanceUID": generate_uid(entropy_srcs=["hyperct-phantom", str(seed), "study"]),
        "SeriesInstanceUID": generate_uid(entropy_srcs=["hyperct-phantom", str(seed), "series"]),
        "FrameOfReferenceUID": generate_uid(entropy_srcs=["hyperct-phantom", str(seed), "for"]),
        "StudyDate": date.strftime("%Y%m%d"),
        "StudyTime": f"{t // 3600:02d}{(t // 60) % 60:02d}{t % 60:02d}",
        "StudyDescription": "CT CHEST WITHOUT CONTRAST (synthetic phantom)",
        "SeriesDescription": f"Chest {scan.thickness:.2f}mm {scan.kernel}",
        "AccessionNumber": f"PH{seed:08d}",
        "Modality": "CT",
        "Manufacturer": MANUFACTURER,
        "ManufacturerModelName": "hyperct.phantom",
        "SoftwareVersions": GENERATOR_VERSION,
        "BodyPartExamined": "CHEST",
        "SliceThickness": round(scan.thickness, 3),
        "KVP": scan.kvp,
        "XRayTubeCurrent": scan.mas,
        "ConvolutionKernel": scan.kernel,
        "PatientPosition": "HFS",
        "PhantomSeed": seed,
    }
