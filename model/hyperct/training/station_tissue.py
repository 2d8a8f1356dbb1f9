"""Per-image lymph-node-station targets of stage 1: how much soft tissue lies near each of the
mediastinum's eight central lymph-node stations inside each of the 55 model images (mL).

Enlarged lymph nodes are soft tissue (~40 HU) at the stations, bulging into the lung or the
mediastinal fat; the normal hila beside them have the same outline, so neither the outline of the
mediastinum nor a blob filter tells a volume with enlarged nodes from one without (model card,
``benchmarks/lymph_outline_oracle.py``: 0.36-0.60). Told where the stations are, the share of soft
tissue within ``STATION_MM`` of them finds the volumes at AUC 0.91, and the mean CLS of the best
stage-1 backbone so far carries little of it (ridge R2 0.14, ``probe_backbone.py --stations``).
These targets ask each image's CLS for its own soft tissue near each station, every phantom, with or
without the finding: the mean CLS over the 55 images then carries the amount at each station
linearly, as the per-image heart shares (``hyperct.training.heart_slices``) do for the heart.

The stations come from the generator's own anatomy (``hyperct.phantom.generator.anatomy_of``), the
soft tissue from the phantom's model-grid HU (0-100 HU, what the model sees).
"""

from __future__ import annotations

import numpy as np

from hyperct.preprocess import N_IMAGES

STATION_TISSUE = "station_tissue"  # the cache array beside each phantom (``PhantomDataset.station_tissue``)
STATION_OFFSETS = "station_offset_mm"  # and each image's z offset from each station (``station_offsets``)
STATION_MM = 10.0  # radius around each station
SOFT_TISSUE_HU = (0.0, 100.0)


def central_stations(anatomy) -> list[str]:
    """The names of ``anatomy``'s central (not axillary) lymph-node stations, in a fixed order."""
    return sorted(k for k in anatomy.med.stations if "axillary" not in k)


STATION_FIELDS = (
    "aortopulmonary",
    "left_hilar",
    "left_paratracheal",
    "paraesophageal",
    "prevascular",
    "right_hilar",
    "right_paratracheal",
    "subcarinal",
)


# each station's standard deviation (mL) over the images of 400 phantoms (seeds 1,011,000..1,011,199 in
# drop_one pairs, matrix 192): the targets are in these units, so each station weighs alike (an image
# holds 0-~2 mL near a station; most hold none)
STATION_SCALE_ML = np.array([0.212, 0.063, 0.203, 0.077, 0.167, 0.046, 0.116, 0.171], dtype=np.float32)


def station_points(anatomy) -> tuple[np.ndarray, np.ndarray]:
    """(len(STATION_FIELDS), 3) positions of the stations as fractional model-grid voxels (z, y, x),
    and the model grid's voxel size (z, y, x) in mm."""
    from hyperct.training.heart_slices import model_grid

    g = model_grid(anatomy.grid)
    names = central_stations(anatomy)
    if tuple(names) != STATION_FIELDS:
        raise ValueError(f"the generator's stations changed: {names}; update STATION_FIELDS")
    pts = np.stack([g.index_of(anatomy.med.stations[k]) for k in names])
    return pts, np.asarray(g.spacing, dtype=np.float64)


def ball_offsets(voxel_mm: np.ndarray, radius_mm: float = STATION_MM) -> np.ndarray:
    """(n, 3) integer voxel offsets (z, y, x) within ``radius_mm`` of a voxel centre."""
    r = np.ceil(radius_mm / np.asarray(voxel_mm)).astype(int)
    dz, dy, dx = np.mgrid[-r[0] : r[0] + 1, -r[1] : r[1] + 1, -r[2] : r[2] + 1]
    inside = (dz * voxel_mm[0]) ** 2 + (dy * voxel_mm[1]) ** 2 + (dx * voxel_mm[2]) ** 2 <= radius_mm**2
    return np.stack([dz[inside], dy[inside], dx[inside]], -1)


def image_station_tissue(hu: np.ndarray, points: np.ndarray, voxel_mm: np.ndarray) -> np.ndarray:
    """(55, len(points)) float32: the mL of soft tissue (``SOFT_TISSUE_HU``) within ``STATION_MM`` of
    each point (model-grid voxels z, y, x) inside each model image's three slices, from the (165, H, W)
    model-grid ``hu``. Voxels of the ball outside the grid count as none."""
    hu = np.asarray(hu)
    soft = (hu >= SOFT_TISSUE_HU[0]) & (hu <= SOFT_TISSUE_HU[1])
    offsets = ball_offsets(voxel_mm)
    voxel_ml = float(np.prod(voxel_mm)) / 1000.0
    out = np.zeros((N_IMAGES, len(points)), dtype=np.float32)
    for s, p in enumerate(points):
        at = np.round(p).astype(int) + offsets
        at = at[np.all((at >= 0) & (at < np.array(hu.shape)), axis=1)]
        hit = at[soft[at[:, 0], at[:, 1], at[:, 2]]]
        if len(hit):
            out[:, s] = np.bincount(hit[:, 0] // 3, minlength=N_IMAGES)[:N_IMAGES] * voxel_ml
    return out


def ball_ml(voxel_mm: np.ndarray) -> float:
    """The volume (mL) of the voxels ``image_station_tissue`` counts around one station."""
    return len(ball_offsets(voxel_mm)) * float(np.prod(voxel_mm)) / 1000.0


def image_offsets_mm(points: np.ndarray, voxel_mm: np.ndarray) -> np.ndarray:
    """(55, len(points)) float32: how far (mm, along z) each model image's middle slice lies from each
    point (model-grid voxels z, y, x); positive: the image is below (higher slice index)."""
    middle = np.arange(N_IMAGES, dtype=np.float64)[:, None] * 3 + 1
    return ((middle - np.asarray(points)[None, :, 0]) * float(voxel_mm[0])).astype(np.float32)


def phantom_stations(
    hu: np.ndarray, seed: int, findings=None, *, matrix: int = 512, n_slices: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``image_station_tissue`` and ``image_offsets_mm`` of the model-grid ``hu`` of ``generate(seed,
    findings, matrix=..., n_slices=...)`` at its own stations (the anatomy is drawn again, nothing
    rendered)."""
    from hyperct.phantom.generator import anatomy_of

    points, voxel_mm = station_points(anatomy_of(seed, findings, matrix=matrix, n_slices=n_slices))
    return image_station_tissue(hu, points, voxel_mm), image_offsets_mm(points, voxel_mm)


def phantom_station_tissue(
    hu: np.ndarray, seed: int, findings=None, *, matrix: int = 512, n_slices: int | None = None
) -> np.ndarray:
    """``phantom_stations``' per-image station tissue alone."""
    return phantom_stations(hu, seed, findings, matrix=matrix, n_slices=n_slices)[0]


def standardised_station_tissue(ml: np.ndarray) -> np.ndarray:
    """The targets the head regresses: ``image_station_tissue``'s mL (..., len(STATION_FIELDS)) in units
    of each station's ``STATION_SCALE_ML``."""
    return (np.asarray(ml, dtype=np.float32) / STATION_SCALE_ML).astype(np.float32)


# --- the level of each image relative to each station, and the tissue expected there -------------------
#
# Most of the per-image targets' variance is where an image lies relative to a station, not how much
# tissue is there: the mean mL at each image's z offset from the station, taken over phantoms without
# enlarged nodes and knowing nothing of the image, already explains R2 0.48 of the targets of
# validation phantoms (0.81-0.87 at the aortopulmonary, left paratracheal and subcarinal stations;
# ``benchmarks/level_oracle.py``), and knowing whether the volume has enlarged nodes raises it
# to 0.53 only. The excess over that level's normal (``station_excess_ml``) leaves the amount: each
# volume's largest total excess, z-scored, finds the enlarged nodes at AUC 0.94.

OFFSET_BIN_MM = 2.0
OFFSET_MAX_MM = 24.0  # beyond: no image holds any of the station's ball (radius ``STATION_MM``)
N_OFFSET_BINS = int(2 * OFFSET_MAX_MM / OFFSET_BIN_MM)


def offset_bins(offsets_mm: np.ndarray) -> np.ndarray:
    """The bin (0..N_OFFSET_BINS-1) of each z offset, -1 where it lies beyond ``OFFSET_MAX_MM``."""
    o = np.asarray(offsets_mm, dtype=np.float64)
    b = np.floor((o + OFFSET_MAX_MM) / OFFSET_BIN_MM).astype(int)
    return np.where((b >= 0) & (b < N_OFFSET_BINS), b, -1)


def level_table(tissue_ml: np.ndarray, offsets_mm: np.ndarray) -> np.ndarray:
    """(stations, N_OFFSET_BINS) mean mL of the phantoms' (P, 55, stations) ``tissue_ml`` in each z
    offset bin of each station (bins no image falls in: 0)."""
    t, b = np.asarray(tissue_ml, dtype=np.float64), offset_bins(offsets_mm)
    table = np.zeros((t.shape[-1], N_OFFSET_BINS))
    for s in range(t.shape[-1]):
        inside = b[..., s] >= 0
        sums = np.bincount(b[..., s][inside], weights=t[..., s][inside], minlength=N_OFFSET_BINS)
        counts = np.bincount(b[..., s][inside], minlength=N_OFFSET_BINS)
        table[s] = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
    return table.astype(np.float32)


def level_expected(offsets_mm: np.ndarray, table: np.ndarray) -> np.ndarray:
    """(..., stations) the mL ``table`` expects at each image's z offset from each station (0 beyond
    ``OFFSET_MAX_MM``)."""
    b = offset_bins(offsets_mm)
    s = np.broadcast_to(np.arange(b.shape[-1]), b.shape)
    return np.where(b >= 0, np.asarray(table)[s, np.maximum(b, 0)], 0.0).astype(np.float32)


# the mean mL in each 2-mm z-offset bin (-24..24 mm) of each station, over the images of the 338
# phantoms without enlarged nodes among the probe's first 400 (377 labelled; seeds 100000.., matrix 192;
# ``benchmarks/level_oracle.py``, ``benchmarks/results/level_oracle.json``)
# fmt: off
STATION_LEVEL_ML = np.array(
    [
        # aortopulmonary
        [0, 0, 0, 0, 0, 0.0015, 0.0562, 0.1504, 0.3467, 0.5847, 0.7222, 0.9331, 1.1697, 1.0816, 0.9434, 0.6412, 0.3649, 0.0837, 0.0036, 0, 0, 0, 0, 0],
        # left_hilar
        [0, 0, 0, 0, 0, 0, 0.0003, 0.0044, 0.0105, 0.0133, 0.0256, 0.0167, 0.0201, 0.0246, 0.0234, 0.0107, 0.0094, 0.0023, 0, 0, 0, 0, 0, 0],
        # left_paratracheal
        [0, 0, 0, 0, 0, 0.0009, 0.0277, 0.1346, 0.2862, 0.5217, 0.7615, 0.9624, 1.0338, 1.0362, 0.9386, 0.6214, 0.3426, 0.0943, 0.0037, 0, 0, 0, 0, 0],
        # paraesophageal
        [0, 0, 0, 0, 0, 0, 0.0028, 0.0153, 0.0329, 0.0751, 0.1489, 0.1868, 0.1617, 0.1231, 0.1226, 0.0488, 0.0108, 0.0102, 0, 0, 0, 0, 0, 0],
        # prevascular
        [0, 0, 0, 0, 0, 0.0001, 0.0447, 0.175, 0.2646, 0.5123, 0.642, 0.6214, 0.6894, 0.6116, 0.3767, 0.338, 0.128, 0.0295, 0.0003, 0, 0, 0, 0, 0],
        # right_hilar
        [0, 0, 0, 0, 0, 0, 0.0014, 0.0113, 0.0204, 0.0161, 0.0549, 0.0399, 0.0558, 0.0472, 0.0291, 0.0075, 0.0023, 0.0003, 0, 0, 0, 0, 0, 0],
        # right_paratracheal
        [0, 0, 0, 0, 0, 0, 0.0057, 0.0504, 0.1056, 0.1937, 0.3332, 0.4455, 0.4391, 0.4301, 0.456, 0.3043, 0.1488, 0.0483, 0.004, 0, 0, 0, 0, 0],
        # subcarinal
        [0, 0, 0, 0, 0, 0.0035, 0.0509, 0.2054, 0.4093, 0.6108, 0.7774, 0.8358, 0.8482, 0.788, 0.5776, 0.4278, 0.2044, 0.0558, 0.0024, 0, 0, 0, 0, 0],
    ],
    dtype=np.float32,
)
# fmt: on
# the standard deviation (mL) of the excess over the images of the 377 labelled ones, per station
EXCESS_SCALE_ML = np.array([0.093, 0.055, 0.081, 0.064, 0.111, 0.033, 0.085, 0.064], dtype=np.float32)


def station_excess_ml(tissue_ml: np.ndarray, offsets_mm: np.ndarray) -> np.ndarray:
    """(55, stations) float32: ``tissue_ml`` less the mL ``STATION_LEVEL_ML`` expects at each image's z
    offset from each station: what a phantom holds near its stations beyond the normal at that level
    (enlarged nodes, and the normal phantoms' own variation)."""
    return (np.asarray(tissue_ml, dtype=np.float32) - level_expected(offsets_mm, STATION_LEVEL_ML)).astype(
        np.float32
    )


def standardised_station_excess(excess_ml: np.ndarray) -> np.ndarray:
    """The excess objective's targets: ``station_excess_ml`` in units of each station's ``EXCESS_SCALE_ML``."""
    return (np.asarray(excess_ml, dtype=np.float32) / EXCESS_SCALE_ML).astype(np.float32)
