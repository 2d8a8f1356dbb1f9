"""The training tests' tiny model configuration and a fast synthetic dataset."""

from __future__ import annotations

import numpy as np
import torch

from hyperct.findings import catalogue
from hyperct.training.config import resolve
from hyperct.training.datasets import N_FINDINGS, VolumeDataset
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
    """Small random 'volumes' (3 images x 32 x 32 pixels: the model takes any image count and size)
    where pleural effusion brightens the lower half and cardiomegaly a central block."""

    kind = "synthetic"

    def __init__(self, n: int, seed: int, *, findings=(PE, CM), missing: float = 0.0):
        super().__init__(source=f"synthetic seed {seed}")
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
        x = torch.randn(3, 3, 32, 32, generator=g) * 0.5
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
