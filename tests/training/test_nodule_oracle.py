"""benchmarks/nodule_blob_oracle.py: its blob filter scores a nodule-sized sphere in the lungs and not a
vessel or a wall when it sees across slices (the whole volume, or one RGB image's 3 slices); one
slice alone cannot tell a vessel running through the slices from a nodule."""

from __future__ import annotations

import numpy as np

from tests.support.benchmarks import load_benchmark


def _lung(tube=False, sphere=False, wall=False):
    z, y, x = np.mgrid[0:165, 0:40, 0:40].astype(np.float32)
    hu = np.full(z.shape, -880.0, dtype=np.float32)
    if tube:  # a vessel running through every slice
        hu[(y - 12) ** 2 + (x - 12) ** 2 <= 2.5**2] = 40.0
    if wall:  # a flat sheet of soft tissue (a fissure, a pleural edge)
        hu[:, :, 30:33] = 40.0
    if sphere:  # a nodule of radius 3 voxels (in-plane; slices are counted at 0.7x)
        hu[((z - 80) * 0.7) ** 2 + (y - 26) ** 2 + (x - 14) ** 2 <= 3.0**2] = 40.0
    return hu


def test_the_blob_filter_scores_a_nodule_and_not_a_vessel_or_a_wall():
    mod = load_benchmark("nodule_blob_oracle")
    background = mod.volume_scores(_lung(tube=True, wall=True))
    nodule = mod.volume_scores(_lung(tube=True, wall=True, sphere=True))
    for view in ("volume", "triplet"):
        key = f"{view}_2.5"
        assert background[key] < 1.0 < 0.5 * nodule[key], (key, nodule[key], background[key])
    vessel, wall = mod.volume_scores(_lung(tube=True)), mod.volume_scores(_lung(wall=True))
    assert vessel["slice_2.5"] > 0.8 * nodule["slice_2.5"]  # in one slice a vessel is a blob
    assert wall["slice_2.5"] < 1.0  # ... a wall is not
    # the baseline counts the lungs' dense voxels, the nodule's among them
    assert nodule["dense_lung_voxels"] > background["dense_lung_voxels"]
