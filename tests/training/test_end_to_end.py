"""End to end: train a tiny HyperCT on phantoms; validation AUC rises well above chance."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hyperct.findings import catalogue
from hyperct.training.cache import PreprocessCache
from tests.support.training import tiny_config

pytest.importorskip("hyperct.phantom")

# Large, high-contrast findings at high prevalence and severity.
FINDINGS = {"cardiomegaly": 0.5, "pericardial_effusion": 0.5}


def _shrunk(dataset):
    """Speed for the test: every 5th RGB image pooled 144 -> 48 px (the model takes any image
    count and size); computed once per volume."""
    original, memo = dataset.pixel_values, {}

    def pixel_values(i):
        if i not in memo:
            memo[i] = F.avg_pool2d(original(i)[2::5], 3)
        return memo[i]

    dataset.pixel_values = pixel_values
    return dataset


@pytest.mark.slow
def test_tiny_model_learns_visible_phantom_findings(tmp_path):
    from hyperct.training.datasets import PhantomDataset
    from hyperct.training.trainer import build_model, score_dataset, train, validation_metrics

    cache = PreprocessCache(tmp_path / "cache")
    common = dict(matrix=64, n_slices=32, findings=FINDINGS, severity=[0.8, 1.0], cache=cache)
    train_ds = _shrunk(PhantomDataset(24, 1000, **common))
    valid_ds = _shrunk(PhantomDataset(16, 5000, **common))
    for ds in (train_ds, valid_ds):
        for fid in FINDINGS:
            k = ds.counts()[fid]
            assert k["positives"] >= 4 and k["negatives"] >= 4, (ds.source, fid, k)
    cfg = tiny_config(
        data={"tasks": list(FINDINGS)},
        optim={"lr": 2e-3},
        schedule={"name": "cosine", "warmup_epochs": 0.5},
        train={"epochs": 4, "batch_size": 4},
    )
    tasks = [catalogue().index(f) for f in FINDINGS]
    untrained = validation_metrics(
        valid_ds.labels, score_dataset(build_model(cfg), valid_ds, tasks, device=torch.device("cpu")), tasks
    )
    result = train(cfg, tmp_path / "run", datasets=(train_ds, valid_ds), echo=None)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    best = max(log, key=lambda e: e["val_mean_auc"])
    assert result.best_metric == pytest.approx(best["val_mean_auc"])
    for fid in FINDINGS:
        assert best["val_auc"][fid] > 0.75, (fid, log)
    assert best["val_mean_auc"] > untrained["val_mean_auc"] + 0.2, (untrained, best)
    assert np.isfinite(log[-1]["train_loss"]) and log[-1]["train_loss"] < log[0]["train_loss"]
