"""benchmarks/lymph_outline_oracle.py: the medial edges of the lungs are measured from the body's
midline without the trachea, a node bulging into one lung moves that side's outline map where it
is and nowhere else, and the local-bump score rises for it."""

from __future__ import annotations

import numpy as np

from tests.support.benchmarks import load_benchmark


def _chest(node=False, trachea=True):
    """A body (0 HU) in air with two lungs (-850 HU) whose medial edges are 10 pixels from the
    midline (x = 60) on every slice, a trachea (air, radius 3) on the midline in the upper slices,
    and, where ``node``, soft tissue (42 HU) pushing the image-right lung's edge out by 5 pixels
    over slices 70-85 and rows 50-57."""
    z, y, x = np.mgrid[0:165, 0:120, 0:121].astype(np.float32)
    hu = np.full(z.shape, -1000.0, dtype=np.float32)
    hu[((y - 60) / 50) ** 2 + ((x - 60) / 58) ** 2 <= 1] = 0.0
    lung_rows = (y >= 30) & (y < 90) & (z >= 20) & (z < 150)
    hu[lung_rows & (x >= 20) & (x <= 50)] = -850.0
    hu[lung_rows & (x >= 70) & (x <= 100)] = -850.0
    if trachea:
        hu[(z < 60) & ((y - 45) ** 2 + (x - 60) ** 2 <= 9)] = -1000.0
    if node:
        hu[(z >= 70) & (z < 86) & (y >= 50) & (y < 58) & (x >= 70) & (x < 75)] = 42.0
    return hu


def test_medial_edges_from_the_midline_without_the_trachea():
    mod = load_benchmark("lymph_outline_oracle")
    lungs, xm = mod.lungs_of(_chest())
    assert abs(xm - 60) < 0.5
    assert not lungs[30, 45, 60]  # the trachea is not lung
    assert lungs[30, 45, 30] and lungs[30, 45, 90]
    edges = mod.medial_edges(lungs, xm)
    np.testing.assert_allclose(edges[30, 45], [10, 10], atol=0.6)
    assert np.isnan(edges[10, 45]).all()  # above the lungs
    assert np.isnan(edges[30, 20]).all()  # in front of them


def test_a_node_moves_its_own_side_of_the_outline_where_it_is():
    mod = load_benchmark("lymph_outline_oracle")
    normal, v0 = mod.outline_map(_chest())
    node, v1 = mod.outline_map(_chest(node=True))
    assert v1 < v0  # the node took lung
    diff = np.nan_to_num(node - normal)
    assert diff[..., 0].max() < 0.1  # the other side unchanged
    moved = np.argwhere(diff[..., 1] > 0.5)
    assert len(moved) >= 1
    # slices 70-85 of the lungs' 20-150, rows 50-57 of 30-90, on the map's relative grid
    assert all(6 <= zb <= 12 and 2 <= yb <= 4 for zb, yb in moved), moved.tolist()
    assert mod.local_bump(node) > mod.local_bump(normal) + 1.0


def test_the_logistic_read_out_learns_a_separable_feature():
    mod = load_benchmark("lymph_outline_oracle")
    rng = np.random.default_rng(0)
    y = (rng.random(200) < 0.2).astype(float)
    x = rng.normal(size=(200, 5))
    x[:, 2] += 3 * y
    l2 = mod.choose_l2(x, y)
    assert l2 in mod.L2_GRID
    score = mod.fit_probe(x, y, l2)
    # the score follows the separating feature alone: moving it moves the score, the others do not
    base = np.zeros((1, 5))
    moved = [float((score(base + 3 * np.eye(5)[j]) - score(base))[0]) for j in range(5)]
    assert np.argmax(np.abs(moved)) == 2 and moved[2] > 0


def test_station_tissue_counts_soft_tissue_around_each_point():
    mod = load_benchmark("lymph_outline_oracle")
    z, y, x = np.mgrid[0:165, 0:144, 0:144].astype(np.float32)
    hu = np.full(z.shape, -100.0, dtype=np.float32)  # fat
    points = np.array([[80.0, 70.0, 60.0], [80.0, 70.0, 100.0]])
    voxel = np.array([2.0, 2.5, 2.5])
    np.testing.assert_allclose(mod.station_tissue(hu, points, voxel), [0.0, 0.0])
    node = ((z - 80) * 2.0) ** 2 + ((y - 70) * 2.5) ** 2 + ((x - 60) * 2.5) ** 2 <= 8.0**2
    hu[node] = 42.0
    share = mod.station_tissue(hu, points, voxel)
    assert share[0] > 0.4 and share[1] == 0.0
    # a point at the grid's edge looks only at the voxels inside it
    assert mod.station_tissue(hu, np.array([[0.0, 0.0, 0.0]]), voxel)[0] == 0.0


def test_station_points_lie_in_the_mediastinum_of_the_model_grid():
    mod = load_benchmark("lymph_outline_oracle")
    points, voxel = mod.station_points(200010, 192)
    assert points.shape == (8, 3)
    assert (points > 0).all() and (points[:, 0] < 165).all() and (points[:, 1:] < 144).all()
    assert ((voxel > 1.0) & (voxel < 5.0)).all()  # mm per model voxel
    assert (np.abs(points[:, 2] - 72) < 25).all()  # near the midline, between the lungs
