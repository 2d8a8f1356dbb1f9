"""Token-aligned square crops of stage-1 training images, placed on a finding where an image has one.

Stage 1 at patch 8 costs ~6x per step of patch 16 on CPU (324 tokens per 144 x 144 image instead of
81). A 72 x 72 crop at patch 8 has 81 tokens again: the patch embedding and the blocks learn to see
small findings at the finer patch for the cost of patch 16 (issue 18; ``benchmarks/
token_learnability.py``: fixed per-token statistics tell a calcification from the same place
without it at 0.92-0.96 at patch 8, 0.73-0.79 at patch 16). Every label of a crop comes from its
own tokens (the token masks), so the image and bag objectives stay exact on crops. DINOv3's RoPE
places a crop's tokens over the whole [-1, 1] range as it does a full image's (multi-crop
training does the same), so a crop does not tell the network where in the chest it is.
"""

from __future__ import annotations

import numpy as np
import torch


def crop_windows(grid: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """The top-left token (row, column) of a ``size`` x ``size`` token window for each image.

    ``grid``: (n, G, G, K) booleans, the images' token labels. An image with a positive token gets a
    window holding one: a finding present in the image is drawn at random, then one of its tokens,
    then the window's place among those that contain it (so small findings are seen as often as
    large ones); an image without any gets a window anywhere. Returns (n, 2) int64.
    """
    n, g = grid.shape[0], grid.shape[1]
    if not 1 <= size <= g:
        raise ValueError(f"crop of {size} tokens: must be between 1 and the grid's {g}")
    out = np.empty((n, 2), dtype=np.int64)
    for m in range(n):
        present = np.flatnonzero(grid[m].any(axis=(0, 1)))
        if present.size == 0:
            out[m] = rng.integers(0, g - size + 1, size=2)
            continue
        rows, cols = np.nonzero(grid[m][..., present[rng.integers(present.size)]])
        j = rng.integers(rows.size)
        for axis, t in enumerate((rows[j], cols[j])):
            out[m, axis] = rng.integers(max(0, t - size + 1), min(t, g - size) + 1)
    return out


def crop_images(
    pixels: torch.Tensor, tokens: torch.Tensor, windows: np.ndarray, size: int, patch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut each image and its token labels to its window.

    ``pixels`` (n, 3, H, W); ``tokens`` (n, G * G, K) (row-major, as the backbone orders its patch
    tokens); ``windows`` (n, 2) top-left tokens (``crop_windows``); ``size`` tokens a side; ``patch``
    pixels a token. Returns (n, 3, size * patch, size * patch) and (n, size * size, K).
    """
    n, g = pixels.shape[0], pixels.shape[-1] // patch
    grid = tokens.reshape(n, g, g, tokens.shape[-1])
    px, tk = [], []
    for m, (r, c) in enumerate(np.asarray(windows, dtype=np.int64).tolist()):
        px.append(pixels[m, :, r * patch : (r + size) * patch, c * patch : (c + size) * patch])
        tk.append(grid[m, r : r + size, c : c + size].reshape(size * size, -1))
    return torch.stack(px), torch.stack(tk)
