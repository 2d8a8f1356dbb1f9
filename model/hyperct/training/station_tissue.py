"""Per-image lymph-node-station targets of stage 1: how much soft tissue lies near each of the
mediastinum's eight central lymph-node stations inside each of the 55 model images (mL).

Enlarged lymph nodes are soft tissue (~40 HU) at the stations, bulging into the lung or the
mediastinal fat; the normal hila beside them have the same outline, so neither the outline of the
mediastinum nor a blob filter tells a volume with enlarged nodes from one without (model card,
``benchmarks/lymph_outline_oracle.py``: 0.53-0.62). Told where the stations are, the share of soft
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


def phantom_station_tissue(
    hu: np.ndarray, seed: int, findings=None, *, matrix: int = 512, n_slices: int | None = None
) -> np.ndarray:
    """``image_station_tissue`` of the model-grid ``hu`` of ``generate(seed, findings, matrix=...,
    n_slices=...)`` at its own stations (the anatomy is drawn again, nothing rendered)."""
    from hyperct.phantom.generator import anatomy_of

    points, voxel_mm = station_points(anatomy_of(seed, findings, matrix=matrix, n_slices=n_slices))
    return image_station_tissue(hu, points, voxel_mm)


def standardised_station_tissue(ml: np.ndarray) -> np.ndarray:
    """The targets the head regresses: ``image_station_tissue``'s mL (..., len(STATION_FIELDS)) in units
    of each station's ``STATION_SCALE_ML``."""
    return (np.asarray(ml, dtype=np.float32) / STATION_SCALE_ML).astype(np.float32)
