"""benchmarks/probe_attention_pooling.py: the attention-pooling probe finds one instance in many, its
pixel-statistics oracle sees a few bright voxels."""

from __future__ import annotations

import numpy as np
import torch

from hyperct.preprocess import normalise
from tests.support.benchmarks import load_benchmark


def _module():
    return load_benchmark("probe_attention_pooling")


def _needle_volumes(n: int, instances: int, rng: np.random.Generator):
    """Volumes of Gaussian instances; a positive volume has ONE instance shifted along dimension 0.
    The mean over instances moves by shift / instances: too little to see; one instance moves by 4 sd."""
    x = rng.normal(size=(n, instances, 8)).astype(np.float32)
    y = (rng.random(n) < 0.5).astype(np.float32)
    where = rng.integers(0, instances, size=n)
    x[np.arange(n), where, 0] += 4.0 * y
    return torch.tensor(x), y[:, None]


def test_attention_pooling_finds_one_instance_that_the_mean_loses():
    mod = _module()
    rng = np.random.default_rng(0)
    x, y = _needle_volumes(400, 60, rng)
    xv, yv = _needle_volumes(200, 60, rng)
    curve = mod.fit_and_score(x, y, xv, yv, epochs=30, batch=16, lr=1e-3, seed=0, ids=["needle"])
    attention = curve[-1]["auc"]["needle"]
    # the baseline the probe must beat: the mean over instances, read by the best direction there is
    mean_score = xv.mean(1)[:, 0].numpy()
    from hyperct.training.metrics import roc_auc

    mean_auc = roc_auc(yv[:, 0], mean_score)
    assert mean_auc < 0.75
    assert attention > 0.88  # the best single direction: 0.95
    assert [c["epoch"] for c in curve] == [10, 20, 30]


def _pixels_from_hu(hu: np.ndarray) -> torch.Tensor:
    """(3, H, W) HU -> the model's normalised input (one image)."""
    return normalise(torch.tensor(hu))[0]


def test_pixel_statistics_see_a_few_bright_voxels_and_where_the_token_is():
    mod = _module()
    hu = np.full((3, 32, 32), 40.0)  # soft tissue; 2 x 2 tokens of 16
    hu[:, 20:22, 5:7] = 400.0  # four calcified voxels per slice in the token at row 1, column 0
    px = torch.stack([_pixels_from_hu(hu), _pixels_from_hu(np.full((3, 32, 32), 40.0))])
    stats = mod.pixel_statistics(px, 16)
    assert stats.shape == (2 * 4, 27)
    # channels: 3 input, then the 3 windows x 3 slices (DEMO_WINDOWS: soft tissue, calcium, lung);
    # the calcium window's maximum of the first slice is column 3 + 3
    calcium_max = stats[:, 6]
    assert calcium_max[2] > 0.0  # 400 HU: (400 - 130) / 400 - 0.5 = 0.175
    others = [i for i in range(8) if i != 2]
    assert torch.all(calcium_max[others] == -0.5)  # nothing above 130 HU there
    # its mean barely moves (4 voxels of 256): what a linear patch embedding sees
    calcium_mean = stats[:, 12 + 6]
    assert float(calcium_mean[2] + 0.5) < 0.02
    # position: row, column, image index in [0, 1]
    assert stats[2, 24:].tolist() == [1.0, 0.0, 0.0]
    assert stats[7, 24:].tolist() == [1.0, 1.0, 1.0]
