"""benchmarks/probe_backbone.py's heart probe: the heart numbers are read back from features that carry
them and not from features that do not; the true geometry separates the cardiac findings."""

from __future__ import annotations

import numpy as np
import pytest

from hyperct.training.datasets import PhantomDataset
from hyperct.training.heart_geometry import HEART_FIELDS, standardised
from tests.support.benchmarks import load_benchmark


class _Labelled(PhantomDataset):
    """Phantoms whose labels are the drawn cardiac findings (nothing rendered)."""

    def __init__(self, count, first):
        super().__init__(count, first, matrix=32, n_slices=12, prepare=False)
        from hyperct.findings import catalogue
        from hyperct.training.datasets import drawn_severities

        ids = catalogue().ids
        self.labels = np.array(
            [[int(f in drawn_severities(s)) for f in ids] for s in self.seeds], dtype=np.int8
        )


@pytest.mark.slow
def test_heart_probe_reads_the_geometry_where_the_features_hold_it():
    mod = load_benchmark("probe_backbone")
    train, valid = _Labelled(240, 3000), _Labelled(120, 9000)
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(len(HEART_FIELDS), 32))

    def features(ds, carry: bool):
        noise = rng.normal(size=(len(ds), 32))
        if not carry:
            return noise
        return np.stack([standardised(ds.heart(i)) for i in range(len(ds))]) @ mix + 0.1 * noise

    held = mod.heart_probe(features(train, True), features(valid, True), train, valid, 1e-2)
    blind = mod.heart_probe(features(train, False), features(valid, False), train, valid, 1e-2)
    assert held["mean_cls_mean_r2"] > 0.9
    assert blind["mean_cls_mean_r2"] < 0.1
    oracle = held["true_geometry_probe_auc"]
    assert oracle == blind["true_geometry_probe_auc"]  # no features involved
    assert oracle["reduced_lv_systolic_function"] > 0.85 and oracle["ventricular_enlargement"] > 0.8
