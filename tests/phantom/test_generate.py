"""generate(): determinism, API contract, geometry, labels, spec."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hyperct.findings import FINDING_IDS, NUM_FINDINGS
from hyperct.phantom import Phantom, generate, generate_from_spec, sample_findings
from hyperct.phantom.params import make_grid, sample_habitus, sample_scan
from tests.support.phantoms import cached


def test_same_seed_same_phantom():
    a = generate(21, None, matrix=64, n_slices=40)
    b = generate(21, None, matrix=64, n_slices=40)
    assert np.array_equal(a.volume.hu, b.volume.hu)
    assert np.array_equal(a.labels, b.labels)
    assert a.severities == b.severities
    assert a.masks.keys() == b.masks.keys()
    for k in a.masks:
        assert np.array_equal(a.masks[k], b.masks[k])


def test_different_seeds_differ():
    a, b = cached(3), cached(4)
    assert a.volume.shape == b.volume.shape  # same matrix and slice count requested
    assert a.volume.spacing != b.volume.spacing  # but each patient has its own size
    assert not np.array_equal(a.volume.hu, b.volume.hu)


def test_public_types(normal_small):
    ph = normal_small
    assert isinstance(ph, Phantom)
    assert ph.volume.hu.dtype == np.float32
    assert ph.volume.shape == (60, 96, 96)
    assert ph.labels.dtype == np.int8 and ph.labels.shape == (NUM_FINDINGS,)
    assert ph.tissue.shape == ph.volume.shape
    assert ph.volume.metadata["PatientName"] == "PHANTOM^HYPERCT"
    assert ph.volume.metadata["Manufacturer"] == "HyperCT synthetic phantom"
    assert np.allclose(ph.volume.direction, np.diag([1.0, 1.0, -1.0]))


def test_normal_ct_has_no_findings_and_no_qc_warnings(normal_small):
    ph = normal_small
    assert ph.masks == {}
    assert ph.severities == {}
    assert (ph.labels == 0).all()
    assert ph.volume.warnings == []
    from hyperct.io.quality import assess_quality

    assert [w.code for w in assess_quality(ph.volume)] == []


@pytest.mark.parametrize("seed", range(40))
def test_scan_geometry_ranges(seed):
    hab = sample_habitus(seed)
    scan = sample_scan(seed, hab, 512)
    g = make_grid(scan)
    assert 0.6 <= scan.pixel <= 0.9
    assert 100 <= scan.n_slices <= 300
    assert 1.0 <= scan.thickness <= 5.0
    assert g.shape == (scan.n_slices, 512, 512)
    # the whole body fits in the field of view, with air around it
    assert hab.width < scan.fov


def test_matrix_keeps_field_of_view():
    a = cached(5, matrix=64, n_slices=40)
    b = cached(5, matrix=96, n_slices=40)
    fov_a = a.volume.spacing[2] * 64
    fov_b = b.volume.spacing[2] * 96
    assert fov_a == pytest.approx(fov_b, rel=1e-6)
    assert a.volume.extent_mm[0] == pytest.approx(b.volume.extent_mm[0], rel=1e-6)


def test_list_and_dict_findings():
    ph = generate(8, ["lung_nodule", "emphysema"], matrix=64, n_slices=40)
    assert set(ph.severities) == {"lung_nodule", "emphysema"}
    assert all(0.3 <= v <= 1.0 for v in ph.severities.values())
    lab = ph.label_dict
    assert lab["lung_nodule"] == 1 and lab["emphysema"] == 1
    assert sum(v == 1 for v in lab.values()) == 2
    ph2 = generate(8, {"lung_nodule": 0.25}, matrix=64, n_slices=40)
    assert ph2.severities == {"lung_nodule": 0.25}


def test_bad_findings_are_rejected_with_the_known_ids():
    with pytest.raises(ValueError, match="unknown finding id 'lung_tumour'.*lung_nodule"):
        generate(1, ["lung_tumour"], matrix=32, n_slices=16)
    with pytest.raises(ValueError, match=r"severity of 'emphysema' must be in \(0, 1\]"):
        generate(1, {"emphysema": 1.5}, matrix=32, n_slices=16)
    with pytest.raises(ValueError, match="seed"):
        generate(-1, {}, matrix=32, n_slices=16)


def test_random_mode_uses_sample_findings():
    seed = 12
    drawn = sample_findings(seed)
    ph = generate(seed, None, matrix=64, n_slices=40)
    conventional = {k: v for k, v in drawn.items() if FINDING_IDS.index(k) < 18}
    assert {k: v for k, v in ph.severities.items() if FINDING_IDS.index(k) < 18} == conventional
    # present findings all have a mask; absent ones none
    assert set(ph.masks) == set(ph.severities)
    for k, m in ph.masks.items():
        assert m.dtype == bool and m.shape == ph.volume.shape and m.any(), k


def test_spec_is_json_and_regenerates():
    ph = generate(9, {"pleural_effusion": 0.6}, matrix=64, n_slices=40)
    spec = json.loads(json.dumps(ph.spec))
    again = generate_from_spec(spec)
    assert np.array_equal(again.volume.hu, ph.volume.hu)
    assert np.array_equal(again.masks["pleural_effusion"], ph.masks["pleural_effusion"])


def test_unlabelled_and_forced_missing_labels():
    ph = generate(2, {"lung_nodule": 0.5}, matrix=48, n_slices=24, labels_from_findings=False)
    assert (ph.labels == -1).all()
    assert "lung_nodule" in ph.masks  # the ground truth is still there
