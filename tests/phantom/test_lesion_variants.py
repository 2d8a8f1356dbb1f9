"""Lesion variants: the same anatomy with a finding drawn elsewhere (saliency counterfactuals, paired training)."""

import numpy as np
import pytest

from hyperct.phantom import generate


def _sides(seed, variant):
    ph = generate(seed, {"pleural_effusion": 0.8}, matrix=64, lesion_variant=variant)
    return ph, tuple(ph.info["pleural_effusion"]["sides"])


def test_variants_share_anatomy_and_differ_only_inside_their_masks():
    normal = generate(5, {}, matrix=64)
    a, _ = _sides(5, 0)
    b, _ = _sides(5, 3)
    for ph in (a, b):
        changed = ph.volume.hu != normal.volume.hu
        assert changed.any()
        assert not (changed & ~ph.masks["pleural_effusion"]).any()
    # a different draw of the finding, not the same one again
    assert (a.masks["pleural_effusion"] != b.masks["pleural_effusion"]).any()


def test_variant_zero_is_the_default_draw_and_variants_are_reproducible():
    a = generate(11, {"lung_nodule": 0.7}, matrix=48)
    b = generate(11, {"lung_nodule": 0.7}, matrix=48, lesion_variant=0)
    c1 = generate(11, {"lung_nodule": 0.7}, matrix=48, lesion_variant=2)
    c2 = generate(11, {"lung_nodule": 0.7}, matrix=48, lesion_variant=2)
    assert np.array_equal(a.volume.hu, b.volume.hu)
    assert np.array_equal(c1.volume.hu, c2.volume.hu)
    assert not np.array_equal(a.volume.hu, c1.volume.hu)
    assert c1.spec["lesion_variant"] == 2


def test_one_sided_variants_exist_on_one_anatomy():
    sides = {_sides(5, v)[1] for v in range(8)}
    assert ("R",) in sides or ("L",) in sides


def test_negative_variant_is_refused():
    with pytest.raises(ValueError, match="lesion_variant"):
        generate(1, {}, matrix=48, lesion_variant=-1)
