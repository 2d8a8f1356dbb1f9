"""Where each finding is, per model token: (55 images, 9 x 9 patches, 25 findings) booleans.

A token (RGB image n, patch row r, column c) covers model slices 3n..3n+2 and model pixels
16r..16r+15 x 16c..16c+15 of the 165 x 144 x 144 grid. It is positive for a finding when any voxel
of that finding's mask falls into it, with the same half-pixel-aligned axis scaling as the
preprocessing (``hyperct.preprocess``). Used to pretrain the demo backbone on phantoms.
"""

from __future__ import annotations

import numpy as np

from hyperct.findings import catalogue
from hyperct.preprocess import IMAGE_SIZE, N_IMAGES, N_SLICES

TOKEN_LABELS = "tokens"
PATCH = 16
GRID = IMAGE_SIZE // PATCH
TOKEN_SHAPE = (N_IMAGES, GRID, GRID, len(catalogue()))


def _token_index(n_source: int, n_model: int, per_token: int) -> np.ndarray:
    """Token index of every source index along one axis (half-pixel-aligned scaling)."""
    model = np.floor((np.arange(n_source) + 0.5) * (n_model / n_source)).astype(np.int64)
    return np.clip(model, 0, n_model - 1) // per_token


def _pool_axis(mask: np.ndarray, axis: int, tokens: np.ndarray, n_tokens: int) -> np.ndarray:
    """Logical OR of ``mask`` over the source indices of each token along ``axis``."""
    starts = np.flatnonzero(np.r_[True, tokens[1:] != tokens[:-1]])
    pooled = np.logical_or.reduceat(mask, starts, axis=axis)
    shape = list(mask.shape)
    shape[axis] = n_tokens
    out = np.zeros(shape, dtype=bool)
    index = [slice(None)] * mask.ndim
    index[axis] = tokens[starts]
    out[tuple(index)] = pooled
    if len(starts) < n_tokens:  # fewer source samples than tokens: nearest source sample fills the gap
        have = tokens[starts]
        nearest = have[np.abs(np.arange(n_tokens)[:, None] - have[None, :]).argmin(axis=1)]
        take = [slice(None)] * mask.ndim
        take[axis] = np.searchsorted(have, nearest)
        out = pooled[tuple(take)]
    return out


def token_labels(masks: dict[str, np.ndarray], shape: tuple[int, int, int]) -> np.ndarray:
    """(55, 9, 9, 25) booleans from finding masks on a (k, j, i) grid of ``shape``."""
    z, y, x = shape
    tk = _token_index(z, N_SLICES, 3)
    tj = _token_index(y, IMAGE_SIZE, PATCH)
    ti = _token_index(x, IMAGE_SIZE, PATCH)
    out = np.zeros(TOKEN_SHAPE, dtype=bool)
    cat = catalogue()
    for fid, mask in masks.items():
        m = np.asarray(mask, dtype=bool)
        if m.shape != tuple(shape):
            raise ValueError(f"mask of {fid} has shape {m.shape}, volume {tuple(shape)}")
        if not m.any():
            continue
        m = _pool_axis(m, 0, tk, N_IMAGES)
        m = _pool_axis(m, 1, tj, GRID)
        m = _pool_axis(m, 2, ti, GRID)
        out[..., cat.index(fid)] = m
    return out
