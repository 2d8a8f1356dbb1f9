"""Where each finding is, per model token: (55 images, G x G patches, 25 findings) booleans.

A token (RGB image n, patch row r, column c) of a backbone with patch size P covers model slices
3n..3n+2 and model pixels Pr..Pr+P-1 x Pc..Pc+P-1 of the 165 x 144 x 144 grid (G = 144 / P: 9 for
the demo's patch 16, 18 for patch 8). It is positive for a finding when any voxel of that finding's
mask falls into it, with the same half-pixel-aligned axis scaling as the preprocessing
(``hyperct.preprocess``). Used to pretrain the demo backbone on phantoms.

The phantom cache keeps the labels of the finest grid (patch 8, ``TOKEN_LABELS``); a coarser patch
(16, 24, ...) is their logical OR over blocks of fine tokens (``coarsen``), exactly what
``token_labels`` gives for that patch directly. A phantom cached before holds patch-16 labels only
(``PATCH16_LABELS``): they serve patch 16; a finer patch generates the phantom again.
"""

from __future__ import annotations

import numpy as np

from hyperct.findings import catalogue
from hyperct.preprocess import IMAGE_SIZE, N_IMAGES, N_SLICES

TOKEN_LABELS = "tokens_p8"  # the name of the stored (finest) labels beside a cached phantom
PATCH16_LABELS = "tokens"  # patch-16 labels, what caches written before the finest grid hold
FINEST_PATCH = 8
PATCH = 16  # the demo backbone's patch
GRID = IMAGE_SIZE // PATCH
TOKEN_SHAPE = (N_IMAGES, GRID, GRID, len(catalogue()))


def token_shape(patch: int = PATCH) -> tuple[int, int, int, int]:
    """(55, G, G, 25) for a backbone with patch size ``patch`` (a multiple of 8 dividing 144)."""
    if patch < FINEST_PATCH or patch % FINEST_PATCH or IMAGE_SIZE % patch:
        raise ValueError(
            f"patch size {patch}: token labels need a multiple of {FINEST_PATCH} that divides {IMAGE_SIZE}"
        )
    return (N_IMAGES, IMAGE_SIZE // patch, IMAGE_SIZE // patch, len(catalogue()))


def unpack(packed: np.ndarray, patch: int) -> np.ndarray:
    """The (55, G, G, 25) booleans of patch ``patch`` from their stored ``np.packbits`` form."""
    shape = token_shape(patch)
    return np.unpackbits(np.asarray(packed))[: int(np.prod(shape))].reshape(shape).astype(bool)


def coarsen(fine: np.ndarray, patch: int = PATCH) -> np.ndarray:
    """Labels of patch ``patch`` from those of the finest grid (``(55, 18, 18, 25)``): the OR over
    each block of ``patch / 8`` x ``patch / 8`` fine tokens."""
    n, g, _, k = token_shape(patch)
    f = patch // FINEST_PATCH
    if fine.shape != token_shape(FINEST_PATCH):
        raise ValueError(f"finest token labels are {token_shape(FINEST_PATCH)}, got {fine.shape}")
    return fine.reshape(n, g, f, g, f, k).any(axis=(2, 4))


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


def token_labels(masks: dict[str, np.ndarray], shape: tuple[int, int, int], patch: int = PATCH) -> np.ndarray:
    """(55, G, G, 25) booleans (G = 144 / ``patch``) from finding masks on a (k, j, i) grid of ``shape``."""
    z, y, x = shape
    out = np.zeros(token_shape(patch), dtype=bool)
    grid = out.shape[1]
    tk = _token_index(z, N_SLICES, 3)
    tj = _token_index(y, IMAGE_SIZE, patch)
    ti = _token_index(x, IMAGE_SIZE, patch)
    cat = catalogue()
    for fid, mask in masks.items():
        m = np.asarray(mask, dtype=bool)
        if m.shape != tuple(shape):
            raise ValueError(f"mask of {fid} has shape {m.shape}, volume {tuple(shape)}")
        if not m.any():
            continue
        m = _pool_axis(m, 0, tk, N_IMAGES)
        m = _pool_axis(m, 1, tj, grid)
        m = _pool_axis(m, 2, ti, grid)
        out[..., cat.index(fid)] = m
    return out
