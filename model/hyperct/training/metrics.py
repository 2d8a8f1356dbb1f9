"""Evaluation metrics for one binary finding: AUC, bootstrap CI, ROC, Youden threshold, decision curves.

Conventions: ``y`` holds 1 (present) / 0 (absent); entries with other values (-1 = not labelled)
must be removed by the caller (``labelled``). ``score`` is any monotone score (probability or
logit); a case is called positive when ``score >= threshold``.

* AUC: the Mann-Whitney statistic, P(score_pos > score_neg) + 0.5 P(tie), from mid-ranks.
* Bootstrap CI: stratified (positives and negatives resampled separately, so every resample has
  both classes and the prevalence of the data), seeded, percentile interval. Not estimable (NaN)
  below ``MIN_CI_PER_CLASS`` (10) positives or 10 negatives: with one positive every resample
  repeats it and the interval collapses to the point estimate (e.g. "1.000-1.000"), which says
  nothing about the uncertainty.
* Youden's J: the threshold maximising sensitivity + specificity - 1 over the observed scores
  (the smallest score called positive at the optimum; on ties of J the highest such threshold, i.e.
  the most specific operating point). Choose it on validation data, not on the test data it is
  reported on.
* Findings the data do not show the score detecting (``discriminates``: an AUC below
  ``MIN_USEFUL_AUC`` (0.70), or its CI, where there is one, not above 0.5) get
  ``specificity_threshold`` instead: Youden's J on a score at or near chance picks an arbitrary
  point, often one that calls a large share of the cases positive (v0.7's lymphadenopathy: validation
  AUC 0.615 with its CI just above 0.5, Youden called 41 % of the test scans, 84 % of the calls false).
* Net benefit at threshold probability pt (Vickers & Elkin 2006):
  NB = TP/n - FP/n * pt / (1 - pt); treat-all: prev - (1 - prev) * pt / (1 - pt); treat-none: 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

# the operating-point policy (its constants)
from hyperct.operating_points import HIGH_SPECIFICITY, MIN_USEFUL_AUC

MIN_CI_PER_CLASS = 10  # fewest positives and fewest negatives for a bootstrap AUC interval


def not_detected(min_auc: float = MIN_USEFUL_AUC) -> str:
    """What ``discriminates`` rejects, in words."""
    return f"AUC below {min_auc:.2f}, or its 95 % CI not above 0.5"


def labelled(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep the entries with a 0/1 label (drop -1 / missing)."""
    y = np.asarray(y)
    score = np.asarray(score, dtype=np.float64)
    keep = (y == 0) | (y == 1)
    return y[keep].astype(np.int8), score[keep]


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve; NaN when a class is absent."""
    y = np.asarray(y)
    score = np.asarray(score, dtype=np.float64)
    n_pos = int((y == 1).sum())
    n_neg = int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _auc_rows(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUC of each row pair: pos (B, P), neg (B, N) -> (B,)."""
    n_pos, n_neg = pos.shape[1], neg.shape[1]
    ranks = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    return (ranks[:, :n_pos].sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def bootstrap_auc_ci(
    y: np.ndarray,
    score: np.ndarray,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    chunk: int = 200,
    min_per_class: int = MIN_CI_PER_CLASS,
) -> tuple[float, float]:
    """Stratified percentile bootstrap CI of the AUC; (nan, nan) when it is not estimable: fewer than
    ``min_per_class`` positives or negatives (see the module docstring)."""
    y = np.asarray(y)
    score = np.asarray(score, dtype=np.float64)
    pos, neg = score[y == 1], score[y == 0]
    if pos.size < max(1, min_per_class) or neg.size < max(1, min_per_class) or n_boot < 1:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    aucs = []
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        ip = rng.integers(0, pos.size, size=(b, pos.size))
        ineg = rng.integers(0, neg.size, size=(b, neg.size))
        aucs.append(_auc_rows(pos[ip], neg[ineg]))
    a = np.concatenate(aucs)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(a, [tail, 1.0 - tail])
    return float(lo), float(hi)


def roc_curve(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), thresholds decreasing; starts at (0, 0) with threshold +inf."""
    y = np.asarray(y)
    score = np.asarray(score, dtype=np.float64)
    order = np.argsort(-score, kind="mergesort")
    s, t = score[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tps = np.cumsum(t == 1)[distinct]
    fps = np.cumsum(t == 0)[distinct]
    n_pos, n_neg = max(int((y == 1).sum()), 1), max(int((y == 0).sum()), 1)
    fpr = np.r_[0.0, fps / n_neg]
    tpr = np.r_[0.0, tps / n_pos]
    return fpr, tpr, np.r_[np.inf, s[distinct]]


def sens_spec(y: np.ndarray, score: np.ndarray, threshold: float) -> tuple[float, float]:
    """Sensitivity and specificity of ``score >= threshold``."""
    y = np.asarray(y)
    called = np.asarray(score, dtype=np.float64) >= threshold
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    sens = float((called & (y == 1)).sum() / n_pos) if n_pos else float("nan")
    spec = float((~called & (y == 0)).sum() / n_neg) if n_neg else float("nan")
    return sens, spec


def youden_threshold(y: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    """(threshold, J) maximising sensitivity + specificity - 1; (nan, nan) when a class is absent."""
    y = np.asarray(y)
    if not ((y == 1).any() and (y == 0).any()):
        return float("nan"), float("nan")
    fpr, tpr, thr = roc_curve(y, score)
    j = tpr - fpr
    j[0] = -np.inf  # the +inf threshold calls nobody positive
    best = int(np.flatnonzero(j >= j.max() - 1e-12)[0])  # highest threshold among (float) ties
    return float(thr[best]), float(j[best])


def specificity_threshold(y: np.ndarray, score: np.ndarray, specificity: float = HIGH_SPECIFICITY) -> float:
    """The lowest threshold whose specificity on these data is at least ``specificity`` (at most
    ``floor((1 - specificity) * negatives)`` negatives called positive); nan without negatives.
    Capped at 1.0 so that it stays a probability."""
    if not 0.0 < specificity <= 1.0:
        raise ValueError(f"specificity must be in (0, 1], got {specificity}")
    y, score = np.asarray(y), np.asarray(score, dtype=np.float64)
    neg = np.sort(score[y == 0])[::-1]
    if neg.size == 0:
        return float("nan")
    allowed = int(np.floor((1.0 - specificity) * neg.size + 1e-9))
    if allowed >= neg.size:
        return float(neg[-1])
    return float(min(np.nextafter(neg[allowed], np.inf), 1.0))


def discriminates(auc: float, ci_low: float, min_auc: float = MIN_USEFUL_AUC) -> bool:
    """Whether an AUC shows the score detecting the finding well enough to call it at Youden's J: the
    AUC at least ``min_auc`` (and above 0.5) and its CI's lower bound above 0.5 (where there is no CI:
    too few cases, no resamples, the AUC alone). ``min_auc`` 0.5 asks only for the CI above chance."""
    if not (np.isfinite(auc) and auc >= min_auc and auc > 0.5):
        return False
    return bool(ci_low > 0.5) if np.isfinite(ci_low) else True


def net_benefit(y: np.ndarray, prob: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Net benefit of treating ``prob >= pt`` at each threshold probability ``pt`` in (0, 1)."""
    y = np.asarray(y)
    prob = np.asarray(prob, dtype=np.float64)
    pts = np.asarray(thresholds, dtype=np.float64)
    n = y.size
    called = prob[None, :] >= pts[:, None]
    tp = (called & (y[None, :] == 1)).sum(axis=1)
    fp = (called & (y[None, :] == 0)).sum(axis=1)
    return tp / n - fp / n * pts / (1.0 - pts)


def net_benefit_treat_all(y: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    prev = float((y == 1).mean())
    pts = np.asarray(thresholds, dtype=np.float64)
    return prev - (1.0 - prev) * pts / (1.0 - pts)


@dataclass
class FindingMetrics:
    """Everything reported for one finding."""

    finding: str
    group: str
    n: int
    positives: int
    auc: float
    ci_low: float
    ci_high: float
    threshold: float
    threshold_source: str
    sensitivity: float
    specificity: float
    youden_j: float
    youden_threshold: float  # Youden's J threshold on these data (NaN without both classes)

    @property
    def evaluable(self) -> bool:
        return self.positives > 0 and self.positives < self.n

    @property
    def ci_note(self) -> str:
        """Why there is no CI ("" when there is one)."""
        if np.isfinite(self.ci_low):
            return ""
        neg = self.n - self.positives
        if self.positives >= MIN_CI_PER_CLASS and neg >= MIN_CI_PER_CLASS:
            return "not computed (no bootstrap resamples)"
        return (
            f"not estimable: {self.positives} positive(s), {neg} negative(s); needs at least "
            f"{MIN_CI_PER_CLASS} of each"
        )


def finding_metrics(
    finding: str,
    group: str,
    y: np.ndarray,
    prob: np.ndarray,
    *,
    threshold: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> FindingMetrics:
    """AUC + CI, the operating threshold (``threshold`` given, else Youden's J on these data) and
    the sensitivity/specificity there."""
    y, prob = labelled(y, prob)
    auc = roc_auc(y, prob)
    lo, hi = bootstrap_auc_ci(y, prob, n_boot=n_boot, seed=seed, level=level)
    thr_j, j = youden_threshold(y, prob)
    if threshold is None:
        thr, source = thr_j, "youden"
    else:
        thr, source = float(threshold), "given"
    sens, spec = sens_spec(y, prob, thr) if np.isfinite(thr) else (float("nan"), float("nan"))
    return FindingMetrics(
        finding=finding,
        group=group,
        n=int(y.size),
        positives=int((y == 1).sum()),
        auc=auc,
        ci_low=lo,
        ci_high=hi,
        threshold=thr,
        threshold_source=source,
        sensitivity=sens,
        specificity=spec,
        youden_j=j,
        youden_threshold=thr_j,
    )


def macro_auc(values: list[float] | np.ndarray) -> float:
    """Mean of the defined AUCs (NaN when none is defined)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")
