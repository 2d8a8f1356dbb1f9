"""napari sample data: a synthetic chest CT phantom (HyperCT) with known findings.

Deterministic (fixed seed). The ground-truth masks of its findings come as a hidden labels layer,
so the saliency overlay can be compared with where the findings really are.
"""

from __future__ import annotations

import numpy as np

from hyperct.phantom.bundled import sample_phantom
from hyperct.volume import NAPARI_AXIS_LABELS
from hyperct_viewer.layers import ct_layer_data


def synthetic_chest_ct() -> list:
    """Layer data: the CT (lung window) and the phantom's ground-truth finding masks (hidden)."""
    from hyperct.findings import catalogue

    ph = sample_phantom()
    vol = ph.volume
    vol.metadata.setdefault("SeriesDescription", "Synthetic chest CT (HyperCT phantom)")
    layers = [ct_layer_data(vol, name="Synthetic chest CT")]
    if ph.masks:
        labels = np.zeros(vol.shape, dtype=np.uint8)
        for fid, mask in ph.masks.items():
            labels[mask] = catalogue().index(fid) + 1
        layers.append(
            (
                labels,
                {
                    "name": "Ground truth (phantom findings)",
                    "scale": vol.napari_scale,
                    "translate": vol.napari_translate,
                    "units": ("mm", "mm", "mm"),  # as the CT layer (napari warns on mixed units)
                    "axis_labels": NAPARI_AXIS_LABELS,
                    "visible": False,
                    "opacity": 0.4,
                    "metadata": {"findings": {catalogue().index(f) + 1: f for f in ph.masks}},
                },
                "labels",
            )
        )
    return layers
