"""The default saliency method on the shipped demo model: the map follows the lesion, not the anatomy.

Same patient, same noise, a pleural effusion drawn on the right or on the left (``lesion_variant``):
only the lesion moves, so a map that shows the model's evidence must move with it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hyperct.findings import catalogue
from hyperct.loading import load_model
from hyperct.phantom import generate
from hyperct.preprocess import preprocess
from hyperct.saliency import DEFAULT_METHOD, method_maps, token_grid
from hyperct.saliency.evaluation import side_columns
from hyperct.saliency.maps import peak_token

# (seed, lesion_variant with the effusion on the right only, variant with it on the left only)
PAIRS = [(4, 0, 4), (7, 4, 5)]


@pytest.fixture(scope="module")
def demo():
    torch.set_num_threads(1)
    return load_model(None, device="cpu").model


@pytest.mark.parametrize("seed,right,left", PAIRS)
def test_the_default_map_moves_to_the_side_of_the_effusion(demo, seed, right, left):
    task = catalogue().index("pleural_effusion")
    share_right, peak_sides = {}, {}
    for side, variant in (("R", right), ("L", left)):
        ph = generate(seed, {"pleural_effusion": 0.8}, matrix=128, lesion_variant=variant)
        assert ph.info["pleural_effusion"]["sides"] == [side]
        px = preprocess(ph.volume).pixel_values[None]
        with torch.no_grad():
            assert torch.sigmoid(demo(px, torch.tensor([task])))[0, 0] > 0.5  # detected both times
        m = np.maximum(token_grid(method_maps(demo, px, [task], DEFAULT_METHOD)[0]), 0).sum(axis=(0, 1))
        cols = side_columns(ph.volume)
        share_right[side] = m[cols == "R"].sum() / m[cols != ""].sum()
        peak_sides[side] = cols[peak_token(method_maps(demo, px, [task], DEFAULT_METHOD)[0])[2]]
    assert share_right["R"] - share_right["L"] >= 0.1, share_right
    assert peak_sides == {"R": "R", "L": "L"}, peak_sides
