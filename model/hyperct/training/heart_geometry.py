"""The heart-geometry objective of stage 1: the phantom's heart, as numbers, from a bag's mean CLS.

The seven opportunistic cardiac findings are thresholds of echo quantities that the phantom renders as
chamber sizes, wall thickness and vessel calibres (``hyperct.phantom.cardiac.heart_shape``). A binary
label per phantom says little about a few millimetres of left-ventricular radius; the geometry itself
says it for every phantom. ``standardised`` gives a phantom's ``HeartShape`` in standard deviations
of the phantom population (``heart_scale``): the regression target of a linear head on the same mean
CLS that HyperCT reads (``hyperct.training.pretrain``, ``optim.heart_loss_weight``). ``ridge_fit``
reads the numbers back from features (the new head's warm start; ``benchmarks/probe_backbone.py``).
"""

from __future__ import annotations

from dataclasses import astuple, fields
from functools import lru_cache

import numpy as np
import torch

from hyperct.phantom.heart import HeartShape

HEART_FIELDS = tuple(f.name for f in fields(HeartShape))
SCALE_SEEDS = 400  # random-mode phantoms whose hearts set the mean and spread of each number


@lru_cache(maxsize=1)
def heart_scale() -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each ``HEART_FIELDS`` number over the random-mode phantom
    population (seeds 0 .. ``SCALE_SEEDS`` - 1; drawn without rendering)."""
    from hyperct.phantom.generator import heart_of

    values = np.array([astuple(heart_of(seed)) for seed in range(SCALE_SEEDS)], dtype=np.float64)
    return values.mean(axis=0), np.maximum(values.std(axis=0), 1e-6)


def standardised(shape: HeartShape) -> np.ndarray:
    """(len(HEART_FIELDS),) float32: ``shape``'s numbers in standard deviations of the population."""
    mean, std = heart_scale()
    return ((np.asarray(astuple(shape), dtype=np.float64) - mean) / std).astype(np.float32)


def standardised_hearts(ds, index=None) -> np.ndarray:
    """(n, len(HEART_FIELDS)) float32: ``standardised`` of the heart of each phantom ``index`` of
    dataset ``ds`` (its ``heart(i)``; default: every phantom)."""
    rows = range(len(ds)) if index is None else index
    return np.stack([standardised(ds.heart(int(i))) for i in rows])


def heart_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every number of every bag: (B, F) predictions vs (B, F) targets."""
    return torch.nn.functional.mse_loss(predicted, target)


def r2_scores(predicted: np.ndarray, target: np.ndarray, names=HEART_FIELDS) -> dict[str, float]:
    """Coefficient of determination of each number (columns, called ``names``) over the rows (phantoms,
    or images); numbers that do not vary among them are left out."""
    out = {}
    for k, name in enumerate(names):
        var = float(np.var(target[:, k]))
        if var > 1e-12:
            out[name] = round(1.0 - float(np.mean((predicted[:, k] - target[:, k]) ** 2)) / var, 4)
    return out


def mean_r2(scores: dict[str, float], digits: int = 4) -> float | None:
    """The mean of ``r2_scores``' values, rounded (None when no number varied)."""
    return round(float(np.mean(list(scores.values()))), digits) if scores else None


RIDGE_STRENGTHS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def ridge_fit(x: np.ndarray, y: np.ndarray, folds: int = 5) -> tuple[np.ndarray, np.ndarray, float]:
    """Least squares with an L2 penalty from features ``x`` (N, D) to targets ``y`` (N, F): weights
    (D, F) and bias (F,) for ``x @ w + b``, on standardised features, the penalty chosen among
    ``RIDGE_STRENGTHS`` (times N) by ``folds``-fold cross-validation on these rows only."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    a = (x - mu) / sd

    def solve(rows, lam):
        ar, yr = a[rows], y[rows]
        w = np.linalg.solve(ar.T @ ar + lam * len(ar) * np.eye(a.shape[1]), ar.T @ (yr - yr.mean(0)))
        return w, yr.mean(0)

    def cv_error(lam):
        err = 0.0
        for part in np.array_split(np.arange(len(a)), folds):
            w, m = solve(np.setdiff1d(np.arange(len(a)), part), lam)
            err += float(np.sum((a[part] @ w + m - y[part]) ** 2))
        return err

    lam = min(RIDGE_STRENGTHS, key=cv_error) if len(a) >= 2 * folds else RIDGE_STRENGTHS[-1]
    w, m = solve(np.arange(len(a)), lam)
    return w / sd[:, None], m - (mu / sd) @ w, lam
