"""Preprocessing as the paper: 165 x 144 x 144, HU window [-1000, 1000] -> [0, 1], 55 RGB triplets, ImageNet."""

from __future__ import annotations

import numpy as np
import torch

from hyperct.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    map_to_grid,
    model_grid_hu,
    model_to_source_coords,
    preprocess,
    resample_hu,
)


def test_shape_window_and_normalisation():
    hu = np.full((40, 60, 50), -3000.0, np.float32)
    hu[20:] = 3000.0
    px = preprocess(hu).pixel_values
    assert px.shape == (55, 3, 144, 144) and px.dtype == torch.float32
    for c in range(3):
        lo = (0.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        hi = (1.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert np.isclose(px[0, c].min().item(), lo, atol=1e-5)  # clipped at -1000 HU -> 0
        assert np.isclose(px[-1, c].max().item(), hi, atol=1e-5)  # clipped at +1000 HU -> 1


def test_triplets_are_consecutive_slices_in_order():
    # 165 slices already: slice s has HU value (s - 82) so each slice is identifiable
    hu = np.broadcast_to((np.arange(165, dtype=np.float32) - 82.0)[:, None, None], (165, 144, 144)).copy()
    hu_back = model_grid_hu(preprocess(hu).pixel_values)
    assert hu_back.shape == (165, 144, 144)
    np.testing.assert_allclose(hu_back[:, 70, 70].numpy(), np.arange(165) - 82.0, atol=1e-3)
    px = preprocess(hu).pixel_values
    # image 10 = slices 30, 31, 32 as R, G, B
    unit = px[10, :, 0, 0] * torch.tensor(IMAGENET_STD) + torch.tensor(IMAGENET_MEAN)
    np.testing.assert_allclose((unit.numpy() * 2000 - 1000), [30 - 82, 31 - 82, 32 - 82], atol=1e-2)


def test_resampling_preserves_position_along_every_axis():
    hu = np.full((300, 200, 250), -1000.0, np.float32)
    hu[150:160, 40:60, 200:230] = 500.0  # a block at known fractional positions
    model = resample_hu(hu).numpy()
    w = model + 1000.0  # mass of the block
    k, j, i = (float((w * g).sum() / w.sum()) for g in np.indices(model.shape))
    # centre of mass of the block, as a fraction of each axis, is preserved
    assert abs((k + 0.5) / 165 - 155 / 300) < 0.01
    assert abs((j + 0.5) / 144 - 50 / 200) < 0.01
    assert abs((i + 0.5) / 144 - 215 / 250) < 0.01


def test_map_back_to_source_grid_lands_on_the_right_voxels():
    src_shape = (330, 288, 288)  # exactly 2x the model grid: boundaries are exact
    tok = np.zeros((55, 9, 9), np.float32)
    tok[7, 2, 5] = 1.0
    back = map_to_grid(tok, src_shape)
    assert back.shape == src_shape
    ks, js, is_ = np.nonzero(back > 0.5)
    # image 7 = model slices 21..23 = source slices 42..47; token row 2 = model rows 32..47 = source
    # rows 64..95; token column 5 = source columns 160..191 (bilinear upsampling blurs by half a token)
    assert 42 - 1 <= ks.min() and ks.max() <= 47 + 1
    assert 64 - 16 <= js.min() and js.max() <= 95 + 16
    assert 160 - 16 <= is_.min() and is_.max() <= 191 + 16
    k, j, i = np.unravel_index(np.argmax(back), back.shape)
    assert 42 <= k <= 47 and 64 <= j <= 95 and 160 <= i <= 191
    assert back[10, 80, 176] == 0 and back[45, 10, 176] == 0


def test_model_slice_positions_cover_the_source_volume():
    pos = model_to_source_coords(165, 330)
    assert pos[0] == 0.5 and pos[-1] == 328.5
    assert np.all(np.diff(pos) > 0)
