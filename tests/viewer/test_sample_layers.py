"""The bundled sample's layers share one world frame (no napari needed to check the layer data)."""

from __future__ import annotations

import numpy as np


def test_sample_layers_share_units_scale_and_translate():
    from hyperct_viewer.sample import synthetic_chest_ct

    layers = synthetic_chest_ct()
    assert [kind for _, _, kind in layers] == ["image", "labels"]
    (ct, ct_kw, _), (labels, lab_kw, _) = layers
    assert labels.shape == ct.shape and labels.max() > 0
    # mixed units make napari raise an "Inconsistent units across layers" notification
    assert lab_kw["units"] == ct_kw["units"] == ("mm", "mm", "mm")
    assert tuple(lab_kw["axis_labels"]) == tuple(ct_kw["axis_labels"])
    np.testing.assert_allclose(lab_kw["scale"], ct_kw["scale"])
    np.testing.assert_allclose(lab_kw["translate"], ct_kw["translate"])
