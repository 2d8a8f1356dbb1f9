"""Ground truth in the model's token frame, for judging saliency maps against known finding masks
(``benchmarks/bench_saliency.py`` and the tests): which tokens lie near a mask, what share of each
token a mask covers, and which token columns lie on the patient's right or left.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import distance_transform_edt

from hyperct.preprocess import IMAGE_SIZE, N_IMAGES, model_to_source_coords, resample_hu
from hyperct.saliency.maps import TOKEN_PIXELS, peak_token, token_grid

# Phantom seeds with a lesion variant that draws the pleural effusion on the patient's right only and
# one that draws it on the left only (seed, right, left), at matrix 128: the effusion oracle of
# tests/engine/test_saliency_demo.py and benchmarks/effusion_sides.py (the test checks the sides).
EFFUSION_SIDE_PAIRS = [(4, 0, 4), (7, 4, 5)]


def grid_shape(patch: int = TOKEN_PIXELS) -> tuple[int, int, int]:
    """(55, G, G): the token grid of a backbone with patch size ``patch`` (9 x 9 at 16, 18 x 18 at 8)."""
    if patch < 1 or IMAGE_SIZE % patch:
        raise ValueError(f"patch size {patch} does not divide the {IMAGE_SIZE}-pixel model image")
    return (N_IMAGES, IMAGE_SIZE // patch, IMAGE_SIZE // patch)


def token_centres(shape, patch: int = TOKEN_PIXELS) -> list[np.ndarray]:
    """Source voxel coordinates of the token centres along k, j, i."""
    return [model_to_source_coords(n, s) for n, s in zip(grid_shape(patch), shape)]


def hit_table(mask: np.ndarray, spacing, tol_mm: float, patch: int = TOKEN_PIXELS) -> np.ndarray:
    """(55, G, G): is each token's centre within ``tol_mm`` of the mask?"""
    dist = distance_transform_edt(~mask, sampling=spacing)
    ck, cj, ci = (
        np.clip(np.round(c).astype(int), 0, s - 1)
        for c, s in zip(token_centres(mask.shape, patch), mask.shape)
    )
    return dist[np.ix_(ck, cj, ci)] <= tol_mm


def token_fraction(mask: np.ndarray, patch: int = TOKEN_PIXELS) -> np.ndarray:
    """(55, G, G): fraction of each token's model pixels inside the mask."""
    m = resample_hu(mask.astype(np.float32)).numpy()  # (165, 144, 144)
    _, g, _ = grid_shape(patch)
    return m.reshape(N_IMAGES, 3, g, patch, g, patch).mean(axis=(1, 3, 5))


def _midline_x(volume) -> float:
    """LPS x (mm) of the body's left-right centre (the extent of voxels denser than -400 HU)."""
    i_idx = np.nonzero((volume.hu > -400).any(axis=(0, 1)))[0]
    return float(volume.index_to_lps([0, 0, 0.5 * (i_idx.min() + i_idx.max())])[0])


def _x_of_i(volume, i) -> np.ndarray:
    i = np.asarray(i, dtype=np.float64)
    return volume.index_to_lps(np.stack([np.zeros_like(i), np.zeros_like(i), i], axis=-1))[:, 0]


def side_columns(volume, patch: int = TOKEN_PIXELS) -> np.ndarray:
    """(G,) 'R' / 'L' / '' per token column: wholly on the patient's right (LPS x below the body's
    midline), wholly on the left, or straddling the midline."""
    n = volume.hu.shape[2]
    g = grid_shape(patch)[2]
    edges = _x_of_i(volume, np.arange(g + 1) * n / g - 0.5)
    lo, hi = np.minimum(edges[:-1], edges[1:]), np.maximum(edges[:-1], edges[1:])
    mid = _midline_x(volume)
    return np.where(hi <= mid, "R", np.where(lo >= mid, "L", ""))


def lateral_share(token_map: np.ndarray, columns: np.ndarray, side: str) -> float | None:
    """Share of a (55, G, G) token map's positive mass in the columns wholly on ``side`` ('R' or 'L';
    ``columns`` from ``side_columns``) out of its mass in the columns wholly on either side (those
    straddling the midline left out); None when that mass is zero."""
    per_column = np.maximum(token_map, 0).sum(axis=(0, 1))
    lateral = per_column[columns != ""].sum()
    return float(per_column[columns == side].sum() / lateral) if lateral > 0 else None


def map_sides(saliency, volume) -> tuple[float | None, str]:
    """A saliency map (one finding's, as ``method_maps`` gives it) of ``volume`` read for laterality:
    the share of its lateral mass on the patient's right (``lateral_share``) and the side of its peak
    token ('R', 'L', or '' for a column across the midline)."""
    cols = side_columns(volume)
    return lateral_share(token_grid(saliency), cols, "R"), str(cols[peak_token(saliency)[2]])


def lesion_side(mask: np.ndarray, volume) -> str | None:
    """'R' or 'L' when >= 90 % of the mask lies on one side of the body's midline, else None."""
    per_i = mask.sum(axis=(0, 1)).astype(np.float64)
    total = per_i.sum()
    if total == 0:
        return None
    right = per_i[_x_of_i(volume, np.arange(mask.shape[2])) < _midline_x(volume)].sum() / total
    return "R" if right >= 0.9 else ("L" if right <= 0.1 else None)
