"""The latent cardiac state: paper thresholds, implied co-occurrence, CT correlates."""

from __future__ import annotations

import numpy as np
import pytest

from hyperct.phantom import cardiac
from hyperct.phantom._rng import stream


def _population(n=3000, sex="M"):
    rng = np.random.default_rng(0)
    return [cardiac.sample_population(rng, sex)[0] for _ in range(n)]


def test_paper_definitions_overlap_as_defined():
    for e in _population():
        c = cardiac.criteria(e, "M")
        if c["atrial_chamber_enlargement"]:  # LAVI > 34 is one arm of the LA-pressure criterion
            assert c["left_atrial_filling_pressure"]
        if c["right_atrial_filling_pressure"]:  # TRV > 3.4 => PASP > 46 + RAP and TRV > 2.8
            assert c["pulmonary_hypertension"] and c["left_atrial_filling_pressure"]


def test_population_prevalence_and_correlation():
    pop = _population()
    lab = np.array([[cardiac.criteria(e, "M")[k] for k in cardiac.CARDIAC_IDS] for e in pop], dtype=float)
    prev = lab.mean(0)
    assert ((prev > 0.04) & (prev < 0.45)).all(), dict(zip(cardiac.CARDIAC_IDS, prev.round(3)))
    ids = list(cardiac.CARDIAC_IDS)
    corr = np.corrcoef(lab.T)
    # pulmonary hypertension goes with RV dysfunction; reduced LVEF with a dilated LV
    assert corr[ids.index("pulmonary_hypertension"), ids.index("reduced_rv_systolic_function")] > 0.3
    assert corr[ids.index("reduced_lv_systolic_function"), ids.index("ventricular_enlargement")] > 0.3


def test_image_follows_the_echo_quantities():
    pop = _population(600)
    shapes = [cardiac.heart_shape(e, 1.9) for e in pop]
    pasp = np.array([e.pasp for e in pop])
    pa = np.array([s.pa_diam for s in shapes])
    assert np.corrcoef(pasp, pa)[0, 1] > 0.95
    lvidd = np.array([e.lvidd for e in pop])
    assert np.allclose([s.lv_radius for s in shapes], 5.0 * lvidd)
    lavi = np.array([e.lavi for e in pop])
    assert np.allclose([s.la_volume for s in shapes], lavi * 1.9)
    ivc = np.array([s.ivc_diam for s in shapes])
    rap = np.array([e.rap for e in pop])
    assert np.corrcoef(rap, ivc)[0, 1] > 0.9


@pytest.mark.parametrize("fid", cardiac.CARDIAC_IDS)
@pytest.mark.parametrize("sex", ["F", "M"])
def test_requested_finding_crosses_its_threshold(fid, sex):
    for seed in range(10):
        for sev in (0.15, 1.0):
            e = cardiac.from_findings(stream(seed, "cardiac"), sex, {fid: sev})
            assert cardiac.criteria(e, sex)[fid], (fid, sev, e)


def test_normal_baseline_is_normal_with_margin():
    for seed in range(200):
        for sex in ("F", "M"):
            e = cardiac.from_findings(stream(seed, "cardiac"), sex, {})
            assert not any(cardiac.criteria(e, sex).values())
            assert e.trv < cardiac.TRV_LA - 0.1 and e.lvef > 52 and e.lavi < 31


def test_explicit_requests_imply_only_what_the_definitions_imply():
    e = cardiac.from_findings(stream(1, "cardiac"), "F", {"ventricular_enlargement": 0.5})
    c = cardiac.criteria(e, "F")
    assert {k for k, v in c.items() if v} == {"ventricular_enlargement"}
    e = cardiac.from_findings(stream(1, "cardiac"), "F", {"right_atrial_filling_pressure": 0.5})
    c = cardiac.criteria(e, "F")
    assert {k for k, v in c.items() if v} == {
        "right_atrial_filling_pressure",
        "pulmonary_hypertension",
        "left_atrial_filling_pressure",
    }
    # pulmonary hypertension alone stays below the RA-pressure threshold
    e = cardiac.from_findings(stream(1, "cardiac"), "F", {"pulmonary_hypertension": 1.0})
    assert e.trv < cardiac.TRV_RA


def test_mask_structures_follow_the_driver():
    e = cardiac.from_findings(stream(2, "cardiac"), "M", {"left_atrial_filling_pressure": 0.5})
    assert cardiac.mask_structures(e, "M")["left_atrial_filling_pressure"] == ("la",)
    e = cardiac.from_findings(stream(2, "cardiac"), "M", {"pulmonary_hypertension": 0.5})
    assert set(cardiac.mask_structures(e, "M")["left_atrial_filling_pressure"]) == {"la", "pa", "rv"}
