"""The training tests' tiny model configuration and a fast synthetic dataset."""

from __future__ import annotations

import numpy as np
import torch

from hyperct.findings import catalogue
from hyperct.training.config import resolve
from hyperct.training.datasets import N_FINDINGS, VolumeDataset
from hyperct.training.pretrain_config import PretrainConfig
from tests.support.models import TINY_BACKBONE

TINY_MODEL = {
    "backbone": dict(TINY_BACKBONE),
    "train_backbone": True,
    "task_dim": 16,
    "pos_dim": 8,
    "hyper_hidden": 16,
    "rank": 4,
    "alpha": 4,
}

PE = catalogue().index("pleural_effusion")
CM = catalogue().index("cardiomegaly")


class SignalDataset(VolumeDataset):
    """Small random 'volumes' (``images`` images, 3 by default, x 32 x 32 pixels: the model takes any
    image count and size) where pleural effusion brightens the lower half and cardiomegaly a central
    block."""

    kind = "synthetic"

    def __init__(self, n: int, seed: int, *, findings=(PE, CM), missing: float = 0.0, images: int = 3):
        super().__init__(source=f"synthetic seed {seed}")
        self.images = images
        rng = np.random.default_rng(seed)
        self.labels = np.full((n, N_FINDINGS), -1, dtype=np.int8)
        for k in findings:
            self.labels[:, k] = rng.random(n) < 0.5
            if missing:
                self.labels[rng.random(n) < missing, k] = -1
        self.names = [f"s{seed}-{i}" for i in range(n)]
        self.seed = seed
        self.reads = 0

    def identity(self, i):
        return {"synthetic": self.seed, "i": i}

    def pixel_values(self, i):
        self.reads += 1
        g = torch.Generator().manual_seed(self.seed * 100003 + i)
        x = torch.randn(self.images, 3, 32, 32, generator=g) * 0.5
        if self.labels[i, PE] == 1:
            x[:, :, 16:, :] += 1.5
        if self.labels[i, CM] == 1:
            x[:, :, 8:24, 8:24] -= 1.5
        return x


def tiny_config(**sections) -> dict:
    """Paper defaults + the tiny model + ``sections`` (nested dicts merged per section)."""
    file_cfg = {"seed": 3, "model": dict(TINY_MODEL), "train": {"epochs": 2, "batch_size": 4}}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(file_cfg.get(key), dict):
            file_cfg[key] = {**file_cfg[key], **value}
        else:
            file_cfg[key] = value
    return resolve(file_cfg)


def v1_pretrain_config(tmp_path, pair="normal", count=2, **optim):
    """A stage-1 v1 configuration on tiny phantoms (effusion and nodule only) under ``tmp_path``:
    the bag objective, balanced loss, fresh seed blocks of ``count`` phantoms (``pair`` twins);
    ``optim`` overrides the optimiser fields."""
    phantoms = {
        "type": "phantom",
        "matrix": 48,
        "n_slices": 24,
        "findings": {"pleural_effusion": 0.7, "lung_nodule": 0.7},
    }
    return PretrainConfig.load(
        None,
        {
            "seed": 5,
            "backbone": dict(TINY_BACKBONE),
            "data": {
                "train": dict(phantoms, count=count, first_seed=60000, pair=pair),
                "valid": dict(phantoms, count=3, first_seed=950),
                "cache_dir": str(tmp_path / "cache"),
                "cache_compress": True,
                "prepare_workers": 0,
                "fresh_seeds": True,
                "block_epochs": 2,
                "keep_blocks": False,
            },
            "optim": dict(
                {
                    "epochs": 2,
                    "warmup_steps": 1,
                    "phantoms_per_step": 2,
                    "lr": 3e-3,
                    "loss": "balanced",
                    "bag_loss_weight": 1.0,
                    "bag_min": 4,
                    "bag_max": 10,
                },
                **optim,
            ),
            "valid": {"phantoms": 3},
        },
    )


def windowed_run(tmp_path):
    """A tiny stage-1 run with the demo's HU windows, one epoch done (its folder, resumable)."""
    from hyperct.network.windows import DEMO_WINDOWS
    from hyperct.training.pretrain import pretrain_backbone

    cfg = v1_pretrain_config(tmp_path, count=2, epochs=1)
    cfg.backbone = dict(TINY_BACKBONE, hu_windows=[list(w) for w in DEMO_WINDOWS])
    out = tmp_path / "bb"
    pretrain_backbone(cfg, out)
    return out


class StopTraining(Exception):
    """Raised by ``stop_after``: a run interrupted between two epochs."""


def stop_after(epoch: int):
    """An ``on_epoch_end`` callback that interrupts ``train`` once ``epoch`` is logged."""

    def callback(entry):
        if entry["epoch"] == epoch:
            raise StopTraining

    return callback


def assert_same_last_weights(a, b) -> dict:
    """The resume states of runs ``a`` and ``b`` hold bitwise equal weights; returns ``a``'s."""
    from safetensors.torch import load_file

    first = load_file(a / "last" / "model.safetensors")
    second = load_file(b / "last" / "model.safetensors")
    assert first.keys() == second.keys()
    for k in first:
        assert torch.equal(first[k], second[k]), k
    return first


def interrupted_and_resumed(cfg, folder, data):
    """Train ``cfg`` into ``folder/full`` in one go and into ``folder/cut`` interrupted after its first
    epoch and resumed (``data()``: fresh (train, valid) datasets for each of the three calls), and
    check both end with the same weights. Returns the datasets the resume read."""
    from hyperct.training.trainer import train

    train(cfg, folder / "full", datasets=data(), echo=None)
    try:
        train(cfg, folder / "cut", datasets=data(), echo=None, on_epoch_end=stop_after(1))
    except StopTraining:
        pass
    else:
        raise AssertionError("the run was not interrupted after its first epoch")
    resumed = data()
    train(cfg, folder / "cut", datasets=resumed, resume=True, echo=None)
    assert_same_last_weights(folder / "full", folder / "cut")
    return resumed
