"""Per-phantom patient (habitus) and scan parameters, drawn from the seed.

All lengths in mm, HU in Hounsfield units. ``Habitus`` fixes the anatomy (body size, fat, lung
length and breathing level, heart size and position, bones); ``Scan`` fixes the acquisition (field
of view, matrix, slice spacing and thickness, noise, kVp, kernel). Both are plain dataclasses that
serialise to JSON via :func:`dataclasses.asdict`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hyperct.phantom._rng import stream
from hyperct.phantom.grid import Grid

THICKNESS_CHOICES = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0)


@dataclass(frozen=True)
class Habitus:
    sex: str  # "F" or "M"
    age: int
    height_cm: float
    weight_kg: float
    bsa: float  # m^2 (Mosteller)
    width: float  # outer body width (left-right) at mid chest
    depth_ant: float  # centre -> anterior skin at mid chest
    depth_post: float  # centre -> posterior skin
    fat: float  # subcutaneous fat thickness (lateral)
    muscle: float  # muscle-thickness factor
    lung_len: float  # lung apex -> right hemidiaphragm dome
    breath: float  # 0 = shallow .. 1 = deep inspiration
    dome_drop: float  # left dome below right dome
    rib_pitch: float
    heart_scale: float
    heart_dx: float  # heart centre shift to the left
    heart_dy: float  # heart centre shift posteriorly
    heart_tilt: float  # long-axis tilt (degrees, + = more horizontal)
    lung_hu: float  # healthy parenchyma (non-dependent) HU
    trab_hu: float  # trabecular bone HU
    spine_depth: float  # posterior skin -> vertebral body centre
    smoker: bool

    @property
    def depth(self) -> float:
        return self.depth_ant + self.depth_post


@dataclass(frozen=True)
class Scan:
    matrix: int
    n_slices: int
    fov: float
    pixel: float
    spacing: float  # slice interval
    thickness: float  # nominal slice thickness
    x_center: float  # body x at the image centre
    y_center: float  # body y at the image centre
    z_top: float  # body z (below apex) of the first slice (negative: above the apex)
    z_apex_lps: float
    noise_sd: float  # HU, per voxel
    kvp: int
    mas: int
    kernel: str
    table_gap: float  # posterior skin -> table top


def sample_habitus(seed: int) -> Habitus:
    rng = stream(seed, "habitus")
    sex = "F" if rng.random() < 0.5 else "M"
    age = int(np.clip(rng.normal(62, 13), 25, 92))
    height = float(rng.normal(163 if sex == "F" else 176, 7))
    bmi = float(np.clip(rng.lognormal(np.log(27.0), 0.18), 17.0, 45.0))
    weight = bmi * (height / 100.0) ** 2
    bsa = float(np.sqrt(height * weight / 3600.0))
    size = (height / 170.0) ** 0.7 * (bmi / 26.0) ** 0.25
    fat = float(
        np.clip(3.0 + 1.9 * (bmi - 19.0) * (1.15 if sex == "F" else 0.9) + rng.normal(0, 3), 3.0, 55.0)
    )
    width = float(
        np.clip((300.0 if sex == "F" else 335.0) * size + 1.3 * (fat - 18) + rng.normal(0, 10), 255, 410)
    )
    depth_ratio = float(np.clip(rng.normal(0.68, 0.05) + 0.004 * (bmi - 26), 0.56, 0.85))
    depth = width * depth_ratio
    breath = float(np.clip(rng.beta(4.0, 1.6), 0.05, 1.0))
    lung_len = float(
        np.clip((height - 100.0) * 3.0 * (0.86 + 0.16 * breath) * rng.normal(1.0, 0.05), 170.0, 265.0)
    )
    return Habitus(
        sex=sex,
        age=age,
        height_cm=round(height, 1),
        weight_kg=round(weight, 1),
        bsa=round(bsa, 3),
        width=width,
        depth_ant=depth * 0.5,
        depth_post=depth * 0.5,
        fat=fat,
        muscle=float(np.clip(rng.normal(1.0 if sex == "M" else 0.8, 0.12), 0.55, 1.4)),
        lung_len=lung_len,
        breath=breath,
        dome_drop=float(rng.uniform(8, 22)),
        rib_pitch=(lung_len + 55.0) / 11.0 * float(rng.normal(1.0, 0.03)),
        heart_scale=float(np.clip(rng.normal(1.0, 0.05) * (bsa / 1.9) ** 0.35, 0.82, 1.15)),
        heart_dx=float(rng.normal(0, 6)),
        heart_dy=float(rng.normal(0, 5)),
        heart_tilt=float(rng.normal(0, 6) + 6.0 * (1.0 - breath)),
        lung_hu=float(-880.0 + 80.0 * (1.0 - breath) + rng.normal(0, 12) + 0.6 * (age - 60)),
        trab_hu=float(np.clip(260.0 - 1.6 * (age - 40) + rng.normal(0, 18), 130.0, 290.0)),
        spine_depth=float(np.clip(fat * 0.7 + 62.0 * (width / 320.0) + rng.normal(0, 4), 45.0, 110.0)),
        smoker=bool(rng.random() < 0.35),
    )


def sample_scan(seed: int, hab: Habitus, matrix: int = 512, n_slices: int | None = None) -> Scan:
    rng = stream(seed, "scan")
    above = float(rng.uniform(22, 45))  # first slice above the apex
    below = float(rng.uniform(70, 105))  # last slice below the right dome
    coverage = hab.lung_len + above + below
    if n_slices is None:
        choices = [t for t in THICKNESS_CHOICES if 100 <= coverage / t <= 300]
        spacing = float(rng.choice(choices)) if choices else coverage / 200.0
        n = int(round(coverage / spacing))
    else:
        n = int(n_slices)
        if n < 2:
            raise ValueError(f"n_slices must be at least 2, got {n_slices}")
        spacing = coverage / n
        rng.random()  # keep the stream aligned with the branch above
    thickness = spacing if rng.random() < 0.6 else spacing * float(rng.uniform(1.2, 1.6))
    thickness = float(np.clip(thickness, 1.0, 5.0))
    fov = float(np.clip(hab.width * rng.uniform(1.08, 1.24), 0.6 * 512, 0.9 * 512))
    pixel = fov / matrix
    kvp = int(rng.choice([100, 120, 120, 120, 140]))
    body_area = np.pi * hab.width * hab.depth / 4.0 / 1e4  # cm^2 / 1e2 scale
    noise = float(
        np.clip(
            11.0
            * (body_area / 4.6) ** 0.9
            / np.sqrt(thickness / 1.5)
            * (120.0 / kvp) ** 0.6
            * rng.uniform(0.85, 1.3),
            5.0,
            45.0,
        )
    )
    # coarser pixels average noise in-plane
    noise = float(noise * min(1.0, 0.75 / pixel) ** 0.5 * 1.0)
    table_gap = float(rng.uniform(2, 8))
    post_skin = hab.depth_post
    # place the body so that the table stays in the field of view
    y_center = float(np.clip(post_skin + table_gap + 18.0 - fov / 2.0 + rng.uniform(0, 25), -40.0, 60.0))
    return Scan(
        matrix=int(matrix),
        n_slices=n,
        fov=fov,
        pixel=pixel,
        spacing=float(spacing),
        thickness=thickness,
        x_center=float(rng.normal(0, 6)),
        y_center=y_center,
        z_top=-above,
        z_apex_lps=float(rng.uniform(-120, -40)),
        noise_sd=noise,
        kvp=kvp,
        mas=int(rng.integers(40, 220)),
        kernel=str(rng.choice(["B30f", "STANDARD", "FC13", "Br40"])),
        table_gap=table_gap,
    )


def make_grid(scan: Scan) -> Grid:
    n = scan.matrix
    x0 = scan.x_center - (n - 1) / 2.0 * scan.pixel
    y0 = scan.y_center - (n - 1) / 2.0 * scan.pixel
    return Grid(
        shape=(scan.n_slices, n, n),
        spacing=(scan.spacing, scan.pixel, scan.pixel),
        x0=float(x0),
        y0=float(y0),
        z0=float(scan.z_top),
        z_apex_lps=float(scan.z_apex_lps),
    )
