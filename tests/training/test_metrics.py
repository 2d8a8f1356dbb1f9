"""Metrics against answers computed independently (brute force, hand-worked examples, formulas)."""

from __future__ import annotations

import numpy as np
import pytest

from hyperct.training.metrics import (
    MIN_USEFUL_AUC,
    bootstrap_auc_ci,
    discriminates,
    finding_metrics,
    labelled,
    macro_auc,
    net_benefit,
    net_benefit_treat_all,
    roc_auc,
    roc_curve,
    sens_spec,
    specificity_threshold,
    youden_threshold,
)


def brute_force_auc(y, s):
    pos, neg = s[y == 1], s[y == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_equals_pairwise_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random(60) < 0.3).astype(int)
    s = np.round(rng.normal(size=60) + y, 1)  # rounding makes ties
    assert len(np.unique(s)) < 60
    assert roc_auc(y, s) == pytest.approx(brute_force_auc(y, s), abs=1e-12)


def test_auc_edge_cases():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert np.isnan(roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))


def test_labelled_drops_missing():
    y, s = labelled(np.array([1, -1, 0, 1]), np.array([0.9, 0.5, 0.1, 0.8]))
    assert y.tolist() == [1, 0, 1] and s.tolist() == [0.9, 0.1, 0.8]


def test_bootstrap_ci_contains_estimate_shrinks_with_n_and_is_seeded():
    rng = np.random.default_rng(0)

    def data(n):
        y = (rng.random(n) < 0.4).astype(int)
        return y, rng.normal(size=n) + 1.0 * y

    widths = []
    for n in (40, 400, 4000):
        y, s = data(n)
        auc = roc_auc(y, s)
        lo, hi = bootstrap_auc_ci(y, s, n_boot=500, seed=1)
        assert lo <= auc <= hi
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    assert widths[2] < 0.05
    y, s = data(100)
    assert bootstrap_auc_ci(y, s, n_boot=200, seed=7) == bootstrap_auc_ci(y, s, n_boot=200, seed=7)
    assert bootstrap_auc_ci(y, s, n_boot=200, seed=7) != bootstrap_auc_ci(y, s, n_boot=200, seed=8)


def test_bootstrap_level_widens_the_interval():
    rng = np.random.default_rng(3)
    y = (rng.random(200) < 0.5).astype(int)
    s = rng.normal(size=200) + y
    lo90, hi90 = bootstrap_auc_ci(y, s, n_boot=400, seed=0, level=0.90)
    lo99, hi99 = bootstrap_auc_ci(y, s, n_boot=400, seed=0, level=0.99)
    assert lo99 <= lo90 and hi99 >= hi90


def test_roc_curve_endpoints_and_area():
    rng = np.random.default_rng(5)
    y = (rng.random(80) < 0.5).astype(int)
    s = rng.normal(size=80) + y
    fpr, tpr, thr = roc_curve(y, s)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0) and np.all(np.diff(thr) < 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(y, s), abs=1e-12)


def test_youden_on_separable_data_picks_the_lowest_positive_score():
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9])
    thr, j = youden_threshold(y, s)
    assert thr == 0.6 and j == 1.0
    assert sens_spec(y, s, thr) == (1.0, 1.0)


def test_youden_hand_worked_example():
    # scores:  0.1 0.3 0.4 0.5 0.7 0.8 ; labels 0 0 1 0 1 1
    y = np.array([0, 0, 1, 0, 1, 1])
    s = np.array([0.1, 0.3, 0.4, 0.5, 0.7, 0.8])
    # threshold 0.7: sens 2/3, spec 1 -> J 0.667; 0.4: sens 1, spec 2/3 -> J 0.667 (tie: higher wins)
    thr, j = youden_threshold(y, s)
    assert j == pytest.approx(2 / 3) and thr == 0.7
    assert sens_spec(y, s, 0.4) == (pytest.approx(1.0), pytest.approx(2 / 3))
    assert np.isnan(youden_threshold(np.ones(4), s[:4])[0])


def test_specificity_threshold_hand_worked():
    # 10 negatives 0.0..0.9 and two positives; specificity 0.9 allows one negative called (the 0.9)
    y = np.array([0] * 10 + [1, 1])
    s = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.85, 0.3])
    thr = specificity_threshold(y, s, 0.9)
    assert 0.8 < thr < 0.8 + 1e-12  # just above the second-highest negative: the lowest that keeps 0.9
    assert sens_spec(y, s, thr) == (0.5, 0.9)  # 0.85 called, 0.3 not
    # specificity 1 (and 0.99 of 10 negatives, which allows none): above every negative
    for spec in (1.0, 0.99):
        thr = specificity_threshold(y, s, spec)
        assert 0.9 < thr < 0.9 + 1e-12 and sens_spec(y, s, thr) == (0.0, 1.0)
    # ties at the cut are all left uncalled; a negative at 1.0 caps the threshold at 1.0
    assert specificity_threshold(np.zeros(4), np.array([0.2, 0.5, 0.5, 0.5]), 0.5) > 0.5
    assert specificity_threshold(np.array([0, 1]), np.array([1.0, 0.3]), 1.0) == 1.0
    assert np.isnan(specificity_threshold(np.ones(3), np.array([0.1, 0.2, 0.3])))
    with pytest.raises(ValueError):
        specificity_threshold(y, s, 0.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_specificity_threshold_meets_its_target_on_random_data(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random(500) < 0.3).astype(int)
    s = np.round(rng.random(500), 2)  # many ties
    for spec in (0.9, 0.95, 0.99):
        thr = specificity_threshold(y, s, spec)
        assert sens_spec(y, s, thr)[1] >= spec
        below = s[(y == 0) & (s < thr)].max()  # the next lower negative score would miss the target
        assert sens_spec(y, s, below)[1] < spec


def test_discriminates_asks_for_a_useful_auc_above_chance():
    assert MIN_USEFUL_AUC == 0.70  # "poor" discrimination below it (Hosmer & Lemeshow)
    assert discriminates(0.78, 0.66) and not discriminates(0.78, 0.50) and not discriminates(0.43, 0.33)
    # v0.7's lymphadenopathy on its validation phantoms: its CI just above 0.5, the AUC poor
    assert not discriminates(0.615, 0.502)
    assert discriminates(0.70, 0.55) and not discriminates(0.6999, 0.55)
    # no CI (too few cases): the AUC alone
    assert discriminates(0.87, float("nan")) and not discriminates(0.62, float("nan"))
    assert not discriminates(0.5, float("nan")) and not discriminates(float("nan"), float("nan"))
    # min_auc 0.5: only the CI above chance (the rule before 2026-12-07); never a score at chance
    assert discriminates(0.615, 0.502, min_auc=0.5) and not discriminates(0.62, 0.50, min_auc=0.5)
    assert not discriminates(0.5, float("nan"), min_auc=0.5)


def test_net_benefit_formula():
    y = np.array([1, 1, 0, 0, 0, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.4, 0.35, 0.1, 0.05, 0.7, 0.6, 0.2, 0.3, 0.15])
    pts = np.array([0.25, 0.5])
    nb = net_benefit(y, p, pts)
    # pt 0.25: called >= 0.25 -> idx 0,1,2,5,6,8: TP 3 (0,1,5), FP 3 (2,6,8); 3/10 - 3/10 * (1/3)
    assert nb[0] == pytest.approx(0.3 - 0.3 / 3)
    # pt 0.5: called 0,5,6: TP 2, FP 1 -> 0.2 - 0.1 * 1
    assert nb[1] == pytest.approx(0.2 - 0.1)
    all_ = net_benefit_treat_all(y, pts)
    assert all_[0] == pytest.approx(0.3 - 0.7 / 3) and all_[1] == pytest.approx(0.3 - 0.7)
    # a perfect classifier's net benefit is the prevalence at every threshold
    perfect = net_benefit(y, y.astype(float), np.array([0.1, 0.5, 0.9]))
    assert np.allclose(perfect, 0.3)


def test_finding_metrics_and_macro():
    rng = np.random.default_rng(9)
    y = np.r_[(rng.random(50) < 0.3).astype(int), -np.ones(5, int)]
    p = rng.random(55)
    m = finding_metrics("lung_nodule", "conventional", y, p, n_boot=100)
    assert m.n == 50 and m.positives == int((y == 1).sum()) and m.threshold_source == "youden"
    assert m.ci_low <= m.auc <= m.ci_high
    g = finding_metrics("lung_nodule", "conventional", y, p, threshold=0.5, n_boot=0)
    assert g.threshold == 0.5 and np.isnan(g.ci_low)
    assert (g.sensitivity, g.specificity) == sens_spec(y[:50], p[:50], 0.5)
    # Youden's threshold on these data is reported also when another threshold is given
    thr_j, j = youden_threshold(y[:50], p[:50])
    assert g.youden_threshold == m.youden_threshold == m.threshold == thr_j and g.youden_j == j
    assert macro_auc([0.6, float("nan"), 0.8]) == pytest.approx(0.7)
    assert np.isnan(macro_auc([float("nan")]))


def test_auc_ci_is_not_estimable_below_the_minimum_per_class():
    from hyperct.training.metrics import MIN_CI_PER_CLASS, finding_metrics

    rng = np.random.default_rng(2)
    # one positive, perfectly separated: the bootstrap interval would be 1.000-1.000
    y = np.array([1] + [0] * 60)
    s = np.concatenate([[5.0], rng.normal(size=60)])
    assert roc_auc(y, s) == 1.0
    lo, hi = bootstrap_auc_ci(y, s, n_boot=200, seed=0)
    assert np.isnan(lo) and np.isnan(hi)
    m = finding_metrics("pleural_effusion", "conventional", y, s, n_boot=200)
    assert m.auc == 1.0 and np.isnan(m.ci_low)
    assert (
        m.ci_note
        == f"not estimable: 1 positive(s), 60 negative(s); needs at least {MIN_CI_PER_CLASS} of each"
    )
    # at the minimum of each class the interval exists
    y2 = np.array([1] * MIN_CI_PER_CLASS + [0] * MIN_CI_PER_CLASS)
    s2 = rng.normal(size=y2.size) + y2
    lo, hi = bootstrap_auc_ci(y2, s2, n_boot=200, seed=0)
    assert lo < roc_auc(y2, s2) < hi
    assert finding_metrics("pleural_effusion", "conventional", y2, s2, n_boot=200).ci_note == ""
    y3 = np.array([1] * 30 + [0] * (MIN_CI_PER_CLASS - 1))  # too few negatives
    assert np.isnan(bootstrap_auc_ci(y3, rng.normal(size=y3.size), n_boot=50)[0])


def test_the_high_specificity_note_states_the_operating_point_used():
    from hyperct.results import HIGH_SPECIFICITY_NOTE
    from hyperct.training.metrics import HIGH_SPECIFICITY

    # one value: the threshold evaluate writes and the note every export shows
    assert specificity_threshold.__defaults__ == (HIGH_SPECIFICITY,)
    assert HIGH_SPECIFICITY_NOTE.startswith(f"Threshold set for {HIGH_SPECIFICITY * 100:g} % specificity")
