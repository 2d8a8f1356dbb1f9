"""Stage-1 training on token-aligned crops placed on findings (``optim.crop_size``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hyperct.errors import ConfigError
from hyperct.training import pretrain
from hyperct.training.crops import crop_images, crop_windows
from hyperct.training.pretrain import PretrainConfig, pretrain_backbone
from tests.support.models import TINY_BACKBONE
from tests.support.training import v1_pretrain_config


def _grid(n=40, g=18, k=3):
    """n images of g x g tokens: finding 0 a large block in every image, finding 1 one token in half
    of them, finding 2 nowhere; image 0 has no positive token at all."""
    grid = np.zeros((n, g, g, k), dtype=bool)
    grid[1:, 2:14, 3:15, 0] = True
    for m in range(1, n, 2):
        grid[m, m % g, (3 * m) % g, 1] = True
    return grid


def test_windows_lie_on_the_grid_and_hold_a_positive_token_where_the_image_has_one():
    grid, size = _grid(), 9
    rng = np.random.default_rng(0)
    for _ in range(20):
        win = crop_windows(grid, size, rng)
        assert win.dtype == np.int64 and ((win >= 0) & (win <= 18 - size)).all()
        for m, (r, c) in enumerate(win):
            inside = grid[m, r : r + size, c : c + size]
            assert inside.any() == grid[m].any()  # every image with a finding shows one


def test_windows_favour_each_present_finding_equally_whatever_its_size():
    grid, size = _grid(), 4
    rng = np.random.default_rng(1)
    with_small = np.arange(1, 40, 2)
    hits = []
    for _ in range(50):
        win = crop_windows(grid, size, rng)
        hits += [
            grid[m, win[m, 0] : win[m, 0] + size, win[m, 1] : win[m, 1] + size, 1].any() for m in with_small
        ]
    # the one-token finding is drawn for half of the windows (plus any the large block's windows catch)
    assert 0.45 < np.mean(hits) < 0.65
    # a window placed uniformly would hold that token about (4/18)^2 = 5 % of the time
    uniform = [
        grid[m, r : r + size, c : c + size, 1].any()
        for m in with_small
        for r, c in np.random.default_rng(2).integers(0, 18 - size + 1, size=(50, 2))
    ]
    assert np.mean(uniform) < 0.1


def test_images_without_findings_get_windows_anywhere():
    grid = np.zeros((400, 9, 9, 2), dtype=bool)
    win = crop_windows(grid, 3, np.random.default_rng(3))
    assert set(win[:, 0].tolist()) == set(range(7)) and set(win[:, 1].tolist()) == set(range(7))


def test_a_crop_keeps_each_token_with_its_own_pixels():
    n, patch, g, k = 3, 8, 18, 2
    ids = torch.arange(n * g * g, dtype=torch.float32).reshape(n, g, g)
    # every pixel holds the number of its token; the labels hold the same numbers
    pixels = ids.repeat_interleave(patch, 1).repeat_interleave(patch, 2)[:, None].expand(n, 3, -1, -1)
    tokens = ids.reshape(n, g * g, 1).expand(n, g * g, k)
    windows = np.array([[0, 0], [9, 4], [5, 9]])
    px, tk = crop_images(pixels, tokens, windows, 9, patch)
    assert px.shape == (n, 3, 72, 72) and tk.shape == (n, 81, k)
    per_token = px[:, 0].reshape(n, 9, patch, 9, patch)[:, :, 0, :, 0].reshape(n, 81)
    torch.testing.assert_close(per_token, tk[..., 0])
    assert tk[1, 0, 0] == ids[1, 9, 4] and tk[2, -1, 0] == ids[2, 13, 17]


def test_crop_size_is_checked_at_load_and_against_the_backbones_patch(tmp_path):
    with pytest.raises(ConfigError, match="optim.crop_size: 20 pixels"):
        PretrainConfig.load(
            None, {"data": {"train": {"type": "phantom", "count": 2}}}, sets=["optim.crop_size=20"]
        )
    cfg = v1_pretrain_config(tmp_path, epochs=1, crop_size=24)  # TINY_BACKBONE has patch 16
    with pytest.raises(ConfigError, match="24 pixels is not a whole number of the backbone's 16-pixel"):
        pretrain_backbone(cfg, tmp_path / "bad")


@pytest.mark.slow
def test_crop_training_feeds_crops_the_twin_gets_the_same_windows_and_validation_sees_whole_images(
    tmp_path, monkeypatch
):
    seen, windows_seen = [], []
    forward, cut = pretrain.forward_heads, pretrain.crop_images

    def recording_forward(backbone, heads, pixels, **kw):
        seen.append(tuple(pixels.shape))
        return forward(backbone, heads, pixels, **kw)

    def recording_crop(pixels, tokens, windows, size, patch):
        windows_seen.append(np.array(windows))
        return cut(pixels, tokens, windows, size, patch)

    monkeypatch.setattr(pretrain, "forward_heads", recording_forward)
    monkeypatch.setattr(pretrain, "crop_images", recording_crop)
    cfg = v1_pretrain_config(tmp_path, pair="drop_one", count=4, epochs=1, crop_size=24)
    cfg = PretrainConfig.from_dict(dict(cfg.to_dict(), backbone=dict(TINY_BACKBONE, patch_size=8)))
    out = tmp_path / "crops"
    pretrain_backbone(cfg, out)
    (entry,) = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert entry["valid"]["token_auc"]
    training = [s for s in seen if s[-1] != 144]
    assert training and all(s[1:] == (3, 24, 24) for s in training)
    assert any(s[1:] == (3, 144, 144) for s in seen)  # validation: whole images
    # each phantom's bag is cut, then its drop_one twin's with the very same windows
    assert len(windows_seen) == 2 * 4 and all(w.shape[1] == 2 for w in windows_seen)
    for a, b in zip(windows_seen[0::2], windows_seen[1::2], strict=True):
        np.testing.assert_array_equal(a, b)
    assert len({w.tobytes() for w in windows_seen[0::2]}) > 1  # (and not one window for all)


@pytest.mark.slow
def test_crop_training_without_the_bag_objective_cuts_every_drawn_image(tmp_path, monkeypatch):
    seen = []
    forward = pretrain.forward_heads

    def recording_forward(backbone, heads, pixels, **kw):
        seen.append(tuple(pixels.shape))
        return forward(backbone, heads, pixels, **kw)

    monkeypatch.setattr(pretrain, "forward_heads", recording_forward)
    cfg = v1_pretrain_config(
        tmp_path, pair=None, epochs=1, bag_loss_weight=0.0, images_per_phantom=6, crop_size=32
    )
    pretrain_backbone(cfg, tmp_path / "plain")
    training = [s for s in seen if s[-1] != 144]
    assert training and all(s == (12, 3, 32, 32) for s in training)  # 2 phantoms x 6 images, 2 x 2 tokens
