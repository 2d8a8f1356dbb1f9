"""``SaliencyMaps``: one scan's maps on the model grid, mapped back to the CT's voxel grid on demand.

A map lives on the model grid: (55, G, G), one value per patch token of each RGB slice triplet
(token methods; G = 144 / patch: 9 for the patch-16 demo backbone, 18 at patch 8), or
(165, 144, 144), one value per model pixel (pixel methods). Every map has ONE peak definition, used
by the viewer (where the view jumps), the reports (key slice) and the benchmark: the token with the
most positive evidence (pixel maps are summed over each token's 3 x patch x patch pixels first),
placed at the token's centre (the middle slice of its triplet, the centre of its patch), in
canonical voxel indices of the CT.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hyperct.preprocess import N_IMAGES, map_to_grid, model_to_source_coords
from hyperct.results import SaliencySummary
from hyperct.volume import CTVolume

TOKEN_PIXELS = 16  # default patch size of the backbone: one token = 16 x 16 pixels of one RGB triplet
BODY_HU = -500.0  # soft tissue and denser; the lungs are inside the body's outline, air outside is not


def body_mask(volume: CTVolume, slices=None) -> np.ndarray:
    """Voxels inside the body's outline, slice by slice (the lungs included, the air around not).

    ``slices``: only these slice indices are computed (the others stay False), e.g. a key slice.
    """
    from scipy.ndimage import binary_fill_holes

    dense = volume.hu > BODY_HU
    out = np.zeros(dense.shape, dtype=bool)
    for k in range(dense.shape[0]) if slices is None else slices:
        if dense[k].any():
            out[k] = binary_fill_holes(dense[k])
    return out


def token_grid(model_map: np.ndarray, patch: int = TOKEN_PIXELS) -> np.ndarray:
    """A model-grid map as (55, h, w) token values: token maps as they are; pixel maps (165, H, W)
    as the sum of their positive part over each token's 3 slices x ``patch`` x ``patch`` pixels."""
    m = np.asarray(model_map, dtype=np.float32)
    if m.ndim != 3:
        raise ValueError(f"expected a 3-D map, got shape {m.shape}")
    z, y, x = m.shape
    if z == N_IMAGES or y % patch or x % patch:  # already one value per token
        return m
    if z % 3:
        raise ValueError(f"a pixel map must be (3n, {patch}h, {patch}w), got shape {m.shape}")
    pos = np.maximum(m, 0)
    return pos.reshape(z // 3, 3, y // patch, patch, x // patch, patch).sum(axis=(1, 3, 5))


def peak_token(model_map: np.ndarray, patch: int = TOKEN_PIXELS) -> tuple[int, int, int]:
    """(image, row, col) of the token with the largest value (first of equal maxima)."""
    tok = token_grid(model_map, patch)
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(tok)), tok.shape))


def token_centre_index(
    token: tuple[int, int, int], grid_shape: tuple[int, int, int], source_shape: tuple[int, int, int]
) -> tuple[int, int, int]:
    """Canonical voxel index (k, j, i) of a token's centre, for a token grid of ``grid_shape``."""
    return tuple(
        int(np.clip(round(float(model_to_source_coords(n, s)[t])), 0, s - 1))
        for t, n, s in zip(token, grid_shape, source_shape)
    )


def peak_index(
    model_map: np.ndarray, source_shape: tuple[int, int, int], patch: int = TOKEN_PIXELS
) -> tuple[int, int, int]:
    """THE peak of a map: the centre of its strongest token, as a canonical voxel index (k, j, i)."""
    tok = token_grid(model_map, patch)
    return token_centre_index(peak_token(tok), tok.shape, tuple(source_shape))


@dataclass
class SaliencyMaps:
    """Saliency of some findings for one scan, on the model grid, mapped back on demand."""

    method: str
    source_shape: tuple[int, int, int]
    model_maps: dict[str, np.ndarray] = field(default_factory=dict)  # (55, G, G) or (165, 144, 144)
    patch: int = TOKEN_PIXELS  # the backbone's patch size: how pixel maps pool to tokens

    def __contains__(self, finding_id: str) -> bool:
        return finding_id in self.model_maps

    def update(self, other: SaliencyMaps) -> None:
        if (
            other.method != self.method
            or tuple(other.source_shape) != tuple(self.source_shape)
            or other.patch != self.patch
        ):
            raise ValueError("cannot merge saliency maps of different methods, volumes or models")
        self.model_maps.update(other.model_maps)

    def volume_map(
        self, finding_id: str, dtype=np.float32, *, within: np.ndarray | None = None
    ) -> np.ndarray:
        """The map on the CT's canonical voxel grid, normalised to [0, 1] (0 everywhere if flat).

        ``within``: a boolean mask on the same grid (e.g. ``body_mask``); the map is 0 outside it.
        """
        grid = map_to_grid(self.model_maps[finding_id], self.source_shape)
        np.maximum(grid, 0, out=grid)
        if within is not None:
            grid[~within] = 0
        peak = float(grid.max())
        if peak > 0:
            grid /= peak
        return grid.astype(dtype, copy=False)

    def peak_index(self, finding_id: str) -> tuple[int, int, int]:
        """Canonical voxel index (k, j, i) of the map's peak (``peak_index`` of this module)."""
        return peak_index(self.model_maps[finding_id], self.source_shape, self.patch)

    def summary(self, finding_id: str, volume: CTVolume) -> SaliencySummary:
        k, j, i = self.peak_index(finding_id)
        lps = volume.index_to_lps([k, j, i])
        return SaliencySummary(
            method=self.method,
            key_slice=k,
            peak_index=(k, j, i),
            peak_lps_mm=tuple(round(float(v), 2) for v in lps),
        )
