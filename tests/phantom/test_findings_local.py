"""Each finding changes the image only inside its own mask, and visibly at the model's resolution.

Same seed with and without the finding: independent random streams per component make every
other voxel bit-identical. The grid here (144 px, ~2.5 mm) is close to what the demo model sees
(144 x 144, ~2.4 mm), so "visible" is checked where it matters.
"""

from __future__ import annotations

import numpy as np
import pytest

from hyperct.findings import FINDING_IDS
from hyperct.phantom import cardiac
from tests.support.phantoms import cached

GRID = dict(matrix=144, n_slices=110)
SEED = 6


@pytest.fixture(scope="module")
def normal():
    return cached(SEED, **GRID)


@pytest.mark.parametrize("fid", FINDING_IDS)
def test_finding_changes_only_inside_its_mask(normal, fid):
    sev = 0.25  # a mild finding: it must still show at ~2.5 mm
    ph = cached(SEED, ((fid, sev),), **GRID)
    assert ph.label_dict[fid] == 1
    mask = ph.masks[fid]
    assert mask.shape == ph.volume.shape and mask.dtype == bool
    diff = ph.volume.hu - normal.volume.hu
    assert np.count_nonzero(diff[~mask]) == 0, (
        f"{fid} changed {np.count_nonzero(diff[~mask])} voxels outside its mask"
    )
    changed = np.abs(diff[mask])
    strong = int((changed > 50.0).sum())
    assert strong >= 8, f"{fid}: only {strong} voxels change by more than 50 HU"
    assert changed.mean() > 10.0, f"{fid}: mean change {changed.mean():.1f} HU inside the mask"
    # only the finding itself and what its definition implies are switched on
    implied = {fid}
    if fid == "atrial_chamber_enlargement":
        implied.add("left_atrial_filling_pressure")
    if fid == "pulmonary_hypertension":
        implied.add("left_atrial_filling_pressure")
    if fid == "right_atrial_filling_pressure":
        implied.update({"pulmonary_hypertension", "left_atrial_filling_pressure"})
    assert set(ph.severities) == implied


def test_locality_holds_with_other_findings_present():
    background = (("lung_opacity", 0.5), ("pleural_effusion", 0.4), ("lymphadenopathy", 0.6))
    grid = dict(matrix=96, n_slices=60)
    base = cached(SEED, background, **grid)
    for fid in ("consolidation", "atelectasis", "ventricular_enlargement"):
        ph = cached(SEED, background + ((fid, 0.7),), **grid)
        diff = ph.volume.hu - base.volume.hu
        assert np.count_nonzero(diff[~ph.masks[fid]]) == 0, fid
        assert np.count_nonzero(diff) > 0, fid


def test_severity_scales_visibility():
    grid = dict(matrix=96, n_slices=60)
    base = cached(SEED, **grid)
    sizes = []
    for sev in (0.2, 0.9):
        ph = cached(SEED, (("lung_nodule", sev),), **grid)
        sizes.append(int((np.abs(ph.volume.hu - base.volume.hu) > 100).sum()))
    assert sizes[1] > 3 * sizes[0] > 0


def test_cardiac_masks_cover_the_right_structures(normal):
    ph = cached(SEED, (("pulmonary_hypertension", 0.8),), **GRID)
    assert ph.cardiac["echo"]["pasp"] > cardiac.PASP_MAX
    assert ph.cardiac["heart_shape"]["pa_diam"] > normal.cardiac["heart_shape"]["pa_diam"] + 4.0
    assert set(ph.cardiac["mask_structures"]["pulmonary_hypertension"]) == {"pa", "rv"}
    # the PA mask holds the (wider) pulmonary trunk: blood voxels that were not blood before
    m = ph.masks["pulmonary_hypertension"]
    newly_blood = (ph.tissue == 11) & (normal.tissue != 11)
    assert newly_blood[m].sum() > 0.9 * newly_blood.sum()
