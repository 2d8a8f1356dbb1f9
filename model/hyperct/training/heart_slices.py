"""Per-image heart targets of stage 1: how much of each heart chamber, the myocardium, the whole heart,
the pulmonary artery and the IVC each of the 55 model images holds (mL).

The whole-heart objective (``hyperct.training.heart_geometry``) asks a bag's mean CLS for numbers of
the whole organ, which a random bag of images does not hold; the heart oracles measured that random
bags teach such a target far less than whole volumes (model card). These targets hold for any bag:
each image's CLS is asked for its own share of each structure, so the mean CLS over all 55 images
carries, linearly, each structure's volume (the sum of the shares), and the cardiac findings are
thresholds of those volumes and calibres.

The shares come from the generator's own geometry (``hyperct.phantom.generator.anatomy_of``: the
chamber ellipsoids and vessel tubes it paints), evaluated at the model grid's voxel centres (the
grid that ``hyperct.preprocess.resample_hu`` samples) with the renderer's partial-volume ramp.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from hyperct.phantom.canvas import sat
from hyperct.phantom.grid import Grid
from hyperct.phantom.tubes import segments_alpha
from hyperct.preprocess import IMAGE_SIZE, N_IMAGES, N_SLICES

HEART_SLICES = "heart_slices"  # the cache array beside each phantom (``PhantomDataset.heart_slices``)
SLICE_FIELDS = ("lv_cavity", "rv_cavity", "la_cavity", "ra_cavity", "myocardium", "heart", "pa", "ivc")
SCALE_SEEDS = 24  # random-mode phantoms whose images set each number's mean and spread
SLAB = 16  # model slices evaluated at once


def model_grid(grid: Grid) -> Grid:
    """The model grid (``N_SLICES`` x ``IMAGE_SIZE`` x ``IMAGE_SIZE`` voxel centres, half-pixel aligned
    as ``resample_hu`` samples it) of a phantom's voxel ``grid``, in the same body millimetres."""
    shape = (N_SLICES, IMAGE_SIZE, IMAGE_SIZE)
    step = [sp * n / m for sp, n, m in zip(grid.spacing, grid.shape, shape)]
    shift = [(0.5 * n / m - 0.5) * sp for sp, n, m in zip(grid.spacing, grid.shape, shape)]
    return Grid(
        shape=shape,
        spacing=tuple(float(v) for v in step),
        x0=grid.x0 + shift[2],
        y0=grid.y0 + shift[1],
        z0=grid.z0 + shift[0],
        z_apex_lps=grid.z_apex_lps,
    )


def image_volumes(anatomy) -> np.ndarray:
    """(55, len(SLICE_FIELDS)) float32: the mL of each structure inside each model image's three slices,
    for ``anatomy`` (``hyperct.phantom.generator.anatomy_of``). Cavities follow the renderer: the other
    chambers' cavities end at the left ventricle's outer wall; the myocardium is what lies inside a
    chamber's outer wall but in no cavity; "heart" is the pericardial sac."""
    g = model_grid(anatomy.grid)
    heart = anatomy.heart
    ipx = np.float32(1.0 / g.px)
    per_slice = np.zeros((N_SLICES, len(SLICE_FIELDS)), dtype=np.float64)
    lo, hi = heart.extent()
    bb = g.bbox(lo, hi)
    if bb is not None:
        for k0 in range(bb[0].start, bb[0].stop, SLAB):
            sb = (slice(k0, min(k0 + SLAB, bb[0].stop)), bb[1], bb[2])
            la, lb, lc = heart.to_frame(*reversed(g.coords(sb)))
            sd = heart.sds(la, lb, lc)
            cav = heart.cavities(sd)
            union = np.minimum.reduce(list(cav.values()))
            outer = heart.outer_wall(sd)
            alpha = {f"{n}_cavity": sat(0.5 - cav[n] * ipx) for n in ("lv", "rv", "la", "ra")}
            alpha["myocardium"] = np.clip(sat(0.5 - outer * ipx) - sat(0.5 - union * ipx), 0.0, None)
            alpha["heart"] = sat(0.5 - heart.envelope(sd, heart.fat_t) * ipx)
            for k, name in enumerate(SLICE_FIELDS[:6]):
                per_slice[sb[0], k] = alpha[name].sum(axis=(1, 2), dtype=np.float64)
    for k, name in enumerate(SLICE_FIELDS[6:], start=6):
        tube = segments_alpha(g, anatomy.med.tube(name).segs)
        per_slice[:, k] = tube.sum(axis=(1, 2), dtype=np.float64)
    voxel_ml = float(np.prod(g.spacing)) / 1000.0
    return (per_slice.reshape(N_IMAGES, 3, -1).sum(axis=1) * voxel_ml).astype(np.float32)


def phantom_image_volumes(seed: int, findings=None, *, matrix: int = 512, n_slices: int | None = None):
    """``image_volumes`` of ``generate(seed, findings, matrix=..., n_slices=...)`` (nothing rendered)."""
    from hyperct.phantom.generator import anatomy_of

    return image_volumes(anatomy_of(seed, findings, matrix=matrix, n_slices=n_slices))


@lru_cache(maxsize=1)
def slice_scale() -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each ``SLICE_FIELDS`` number over every image of the random-mode
    phantoms ``0 .. SCALE_SEEDS - 1`` (their geometry only, in mL, which the in-plane matrix does not
    change; ~6 s)."""
    values = np.concatenate([phantom_image_volumes(s, matrix=192) for s in range(SCALE_SEEDS)])
    return values.mean(axis=0), np.maximum(values.std(axis=0), 1e-6)


def standardised_slices(volumes: np.ndarray) -> np.ndarray:
    """``image_volumes``' numbers (..., len(SLICE_FIELDS)) in standard deviations of the population's
    images (float32)."""
    mean, std = slice_scale()
    return ((np.asarray(volumes, dtype=np.float64) - mean) / std).astype(np.float32)
