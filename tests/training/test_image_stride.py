"""train.image_stride: training reads every Nth image of a volume from a random offset per volume
and step (reproducibly, so a resumed run ends where an uninterrupted one does); validation reads
every image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hyperct.errors import ConfigError
from hyperct.network.hyperct import HyperCT
from hyperct.training.config import TrainConfig
from hyperct.training.image_stride import step_rng, strided_count, strided_images
from hyperct.training.trainer import train
from tests.support.training import SignalDataset, interrupted_and_resumed, tiny_config


def _indexed(b: int, n: int) -> torch.Tensor:
    """(b, n, 2) whose [v, i] holds (v, i): what was picked can be read back."""
    v, i = torch.meshgrid(torch.arange(b), torch.arange(n), indexing="ij")
    return torch.stack([v, i], dim=-1)


def test_each_volume_gets_evenly_spaced_images_from_its_own_offset():
    x = _indexed(6, 55)
    seen = set()
    for k in range(40):
        out = strided_images(x, 3, np.random.default_rng(k))
        assert out.shape == (6, 18, 2)
        assert torch.equal(out[..., 0], torch.arange(6)[:, None].expand(6, 18))  # rows stay with their volume
        idx = out[..., 1]
        assert torch.all(idx[:, 1:] - idx[:, :-1] == 3)
        assert torch.all((idx[:, 0] >= 0) & (idx[:, -1] <= 54))
        seen.update(idx[:, 0].tolist())
    assert seen == {0, 1, 2, 3}  # every offset that keeps 18 images in range, none other


def test_stride_one_keeps_every_image_and_a_too_large_stride_is_refused():
    x = _indexed(2, 9)
    assert torch.equal(strided_images(x, 1, np.random.default_rng(0)), x)
    assert strided_count(55, 3) == 18 and strided_count(55, 55) == 1 and strided_count(9, 2) == 4
    with pytest.raises(ValueError, match="more than the 9 images"):
        strided_images(x, 10, np.random.default_rng(0))
    with pytest.raises(ValueError, match="positive"):
        strided_count(9, 0)


def test_the_draw_depends_on_seed_epoch_and_step_only():
    x = _indexed(8, 55)
    a = strided_images(x, 5, step_rng(3, 1, 7))
    assert torch.equal(a, strided_images(x, 5, step_rng(3, 1, 7)))
    others = [strided_images(x, 5, step_rng(*s)) for s in ((3, 1, 8), (3, 2, 7), (4, 1, 7))]
    assert all(not torch.equal(a, o) for o in others)


@pytest.mark.parametrize("bad", [0, 56, 2.5, "3"])
def test_config_refuses_a_stride_outside_the_images_of_a_volume(bad):
    with pytest.raises(ConfigError, match="train.image_stride"):
        TrainConfig.from_dict({"train": {"image_stride": bad}})


def _run(tmp_path, name, **train_section):
    cfg = tiny_config(
        model={"train_backbone": False},
        optim={"lr": 3e-3},
        train={"epochs": 2, "batch_size": 4, "micro_batch": 2, **train_section},
    )
    data = (SignalDataset(12, 0, images=9), SignalDataset(8, 1, images=9))
    return train(cfg, tmp_path / name, datasets=data, echo=None)


@pytest.mark.parametrize("cache", ["off", "float32"])
def test_training_passes_read_every_third_image_and_validation_reads_all(tmp_path, monkeypatch, cache):
    calls = []
    original = HyperCT.pooled_features

    def spy(self, pixel_values, tasks=None, **kw):
        calls.append((self.training, pixel_values.shape[1]))
        return original(self, pixel_values, tasks, **kw)

    monkeypatch.setattr(HyperCT, "pooled_features", spy)
    _run(tmp_path, cache, image_stride=3, embedding_cache=cache)
    train_images = {n for training, n in calls if training}
    valid_images = {n for training, n in calls if not training}
    assert train_images == {3} and valid_images == {9}


def test_a_strided_run_resumed_after_an_epoch_ends_where_an_uninterrupted_one_does(tmp_path):
    from safetensors.torch import load_file

    cfg = tiny_config(
        model={"train_backbone": False},
        optim={"lr": 3e-3},
        train={"epochs": 2, "batch_size": 4, "micro_batch": 2, "image_stride": 2},
    )
    interrupted_and_resumed(
        cfg, tmp_path, lambda: (SignalDataset(12, 0, images=9), SignalDataset(8, 1, images=9))
    )
    plain = _run(tmp_path, "plain")  # the same run without the stride trains differently
    strided = load_file(tmp_path / "full" / "last" / "model.safetensors")
    trained = {n: p for n, p in plain.model.named_parameters() if p.requires_grad}
    assert any(not torch.equal(trained[k].detach(), strided[k]) for k in trained if k in strided)
