"""Stage 1's per-image lymph-node-station objective (issue 18): the soft tissue near each of the
generator's central stations inside each model image; enlarged nodes add to it at their own stations;
the dataset caches it; the backbone probe reads it (a resume that switches it on:
``test_heart_slices``)."""

from __future__ import annotations

import numpy as np
import pytest

from hyperct.errors import ConfigError
from hyperct.phantom import generate
from hyperct.phantom.generator import anatomy_of
from hyperct.preprocess import N_IMAGES, resample_hu
from hyperct.training.cache import PreprocessCache
from hyperct.training.datasets import PhantomDataset
from hyperct.training.datasets.phantoms import drawn_severities
from hyperct.training.pretrain import load_pretrain_config
from hyperct.training.station_tissue import (
    EXCESS_SCALE_ML,
    N_OFFSET_BINS,
    OFFSET_MAX_MM,
    STATION_FIELDS,
    STATION_LEVEL_ML,
    STATION_OFFSETS,
    STATION_TISSUE,
    ball_ml,
    image_offsets_mm,
    image_station_tissue,
    level_expected,
    level_table,
    phantom_station_tissue,
    phantom_stations,
    station_excess_ml,
    station_points,
)


def test_soft_tissue_near_a_point_is_counted_in_the_images_it_lies_in():
    hu = np.full((165, 64, 64), -100.0, dtype=np.float32)  # fat
    voxel = np.array([2.0, 2.5, 2.5])
    points = np.array([[61.0, 30.0, 30.0], [61.0, 30.0, 60.0]])
    assert image_station_tissue(hu, points, voxel).sum() == 0.0
    hu[55:68, 26:35, 26:35] = 40.0  # a block of soft tissue around the first point, slices 55-67
    got = image_station_tissue(hu, points, voxel)
    assert got.shape == (N_IMAGES, 2) and got.dtype == np.float32
    first = got[:, 0]
    assert set(np.nonzero(first)[0]) <= set(range(55 // 3, 67 // 3 + 1))  # images 18..22 only
    assert first[20] > 0
    # the block's voxels within 10 mm of the point, in mL
    z, y, x = np.mgrid[55:68, 26:35, 26:35]
    near = ((z - 61) * 2.0) ** 2 + ((y - 30) * 2.5) ** 2 + ((x - 30) * 2.5) ** 2 <= 100.0
    assert first.sum() == pytest.approx(near.sum() * 2.0 * 2.5 * 2.5 / 1000.0, rel=1e-5)
    assert first.sum() == pytest.approx(ball_ml(voxel), rel=1e-5)  # the block holds the whole ball
    # the second point's ball reaches past the grid's edge: only the voxels inside count; none soft
    assert got[:, 1].sum() == 0.0


def test_enlarged_nodes_add_soft_tissue_at_their_own_stations():
    # the oracle: the same phantom with and without its lymphadenopathy (everything else the same)
    seed = next(s for s in range(200000, 200100) if "lymphadenopathy" in drawn_severities(s))
    drawn = drawn_severities(seed)
    without_it = {k: v for k, v in drawn.items() if k != "lymphadenopathy"}
    grid = dict(matrix=96, n_slices=90)
    with_ph = generate(seed, dict(drawn), **grid)
    without_ph = generate(seed, without_it, **grid)
    a = phantom_station_tissue(resample_hu(with_ph.volume.hu).numpy(), seed, drawn, **grid)
    b = phantom_station_tissue(resample_hu(without_ph.volume.hu).numpy(), seed, without_it, **grid)
    assert a.shape == (N_IMAGES, len(STATION_FIELDS))
    gained = (a - b).sum(axis=0)
    assert gained.max() > 0.5  # mL at some station
    assert (gained > -0.05).all()  # no station lost tissue
    # the stations that gained are ones the generator enlarged
    drawn_stations = set(with_ph.info["lymphadenopathy"]["stations"])
    assert STATION_FIELDS[int(np.argmax(gained))] in drawn_stations


def test_the_stations_are_the_generators_own():
    anatomy = anatomy_of(7, matrix=64, n_slices=40)
    points, voxel = station_points(anatomy)
    assert points.shape == (len(STATION_FIELDS), 3)
    assert sorted(k for k in anatomy.med.stations if "axillary" not in k) == list(STATION_FIELDS)
    assert ((points[:, 0] > 0) & (points[:, 0] < 165)).all()
    assert ((points[:, 1:] > 0) & (points[:, 1:] < 144)).all()
    assert (voxel > 0.5).all() and (voxel < 10).all()


def test_the_dataset_keeps_each_phantoms_station_tissue_in_the_cache(tmp_path):
    cache = PreprocessCache(tmp_path / "c")
    ds = PhantomDataset(2, 900, matrix=32, n_slices=12, pair="drop_one", cache=cache, prepare=False)
    first = ds.station_tissue(1)
    assert first.shape == (N_IMAGES, len(STATION_FIELDS)) and first.dtype == np.float32
    expected = phantom_station_tissue(ds.model_hu(1), ds.seeds[1], ds.findings_for(1), matrix=32, n_slices=12)
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(cache.get_array(ds._key(1), STATION_TISSUE), first)
    # an array of the wrong shape in the cache (damaged, or another version) is computed again
    cache.put_array(ds._key(1), STATION_TISSUE, np.zeros((3, 2), dtype=np.float32))
    np.testing.assert_array_equal(ds.station_tissue(1), first)
    cache.put_array(ds._key(1), STATION_TISSUE, np.full_like(first, np.nan))
    np.testing.assert_array_equal(ds.station_tissue(1), first)
    # the offsets are kept beside it, and the excess is the tissue less the level's normal
    offsets = ds.station_offsets(1)
    np.testing.assert_array_equal(cache.get_array(ds._key(1), STATION_OFFSETS), offsets)
    np.testing.assert_array_equal(ds.station_excess(1), first - level_expected(offsets, STATION_LEVEL_ML))


@pytest.mark.parametrize("setting", ["station_loss_weight", "station_excess_loss_weight"])
def test_the_per_image_station_objective_needs_whole_images_of_phantoms(setting):
    with pytest.raises(ConfigError, match=setting):
        load_pretrain_config(
            None,
            {
                "data": {"train": {"type": "phantom", "count": 2}},
                "optim": {setting: 1, "crop_size": 64},
            },
        )


def test_each_images_offset_from_a_station_is_its_middle_slices_distance():
    points = np.array([[61.0, 30.0, 30.0], [0.0, 5.0, 5.0]])
    got = image_offsets_mm(points, np.array([2.0, 2.5, 2.5]))
    assert got.shape == (N_IMAGES, 2) and got.dtype == np.float32
    assert got[20, 0] == 0.0  # image 20 holds slices 60-62: its middle slice is the station's
    assert got[21, 0] == 6.0 and got[19, 0] == -6.0  # the next image lies 3 slices of 2 mm below
    assert got[0, 1] == 2.0 and (np.diff(got[:, 1]) == 6.0).all()


def test_the_level_table_is_the_mean_tissue_at_each_offset_and_none_beyond():
    # an oracle: tissue made from a known profile of the offset, plus noise that averages out
    rng = np.random.default_rng(0)
    offsets = rng.uniform(-40, 40, size=(400, N_IMAGES, 2)).astype(np.float32)
    profile = np.array([1.0, 0.3])  # mL at the station, per station
    truth = profile * np.exp(-((offsets / 8.0) ** 2)) * (np.abs(offsets) < OFFSET_MAX_MM)
    tissue = truth + rng.normal(0, 0.05, size=truth.shape)
    table = level_table(tissue, offsets)
    assert table.shape == (2, N_OFFSET_BINS)
    expected = level_expected(offsets, table)
    assert np.abs(expected - truth).mean() < 0.03  # the profile, up to the bins' width
    assert (expected[np.abs(offsets) >= OFFSET_MAX_MM] == 0).all()
    # the table knows nothing of an image but its offset: shuffling the phantoms changes nothing
    np.testing.assert_allclose(level_table(tissue[::-1], offsets[::-1]), table, atol=1e-6)


def test_the_shipped_level_table_is_the_benchmarks_measurement():
    import json
    from pathlib import Path

    doc = json.loads(
        (Path(__file__).resolve().parents[2] / "benchmarks/results/level_oracle.json").read_text()
    )
    recorded = np.array([doc["stations"]["level_table_ml"][f] for f in STATION_FIELDS])
    np.testing.assert_allclose(STATION_LEVEL_ML, recorded, atol=1e-3)
    spread = [doc["stations"]["excess_sd_ml"][f] for f in STATION_FIELDS]
    np.testing.assert_allclose(EXCESS_SCALE_ML, spread, atol=1e-3)


def test_the_excess_keeps_the_enlarged_nodes_and_takes_out_the_level():
    # twins: the same anatomy (so the same offsets), with and without its lymphadenopathy
    seed = next(s for s in range(200000, 200100) if "lymphadenopathy" in drawn_severities(s))
    drawn = drawn_severities(seed)
    without_it = {k: v for k, v in drawn.items() if k != "lymphadenopathy"}
    grid = dict(matrix=96, n_slices=90)
    with_t, with_o = phantom_stations(
        resample_hu(generate(seed, dict(drawn), **grid).volume.hu).numpy(), seed, drawn, **grid
    )
    wo_t, wo_o = phantom_stations(
        resample_hu(generate(seed, without_it, **grid).volume.hu).numpy(), seed, without_it, **grid
    )
    np.testing.assert_array_equal(with_o, wo_o)
    np.testing.assert_allclose(
        station_excess_ml(with_t, with_o) - station_excess_ml(wo_t, wo_o), with_t - wo_t, atol=1e-6
    )
    # what is taken out is the level's normal: the same for both, zero far from every station
    taken = with_t - station_excess_ml(with_t, with_o)
    np.testing.assert_allclose(taken, level_expected(with_o, STATION_LEVEL_ML), atol=1e-6)
    assert (taken[np.abs(with_o) >= OFFSET_MAX_MM] == 0).all() and taken.max() > 0


class _Stations:
    """A stand-in dataset: random per-image station tissue; lymphadenopathy where one station holds
    more than usual."""

    def __init__(self, n: int, seed: int):
        from hyperct.findings import catalogue

        rng = np.random.default_rng(seed)
        self.tissue = rng.gamma(2.0, 0.1, size=(n, N_IMAGES, len(STATION_FIELDS))).astype(np.float32)
        sick = rng.random(n) < 0.3
        self.tissue[sick, 20, 3] += 3.0
        self.labels = np.zeros((n, len(catalogue().ids)), dtype=np.int8)
        self.labels[:, catalogue().ids.index("lymphadenopathy")] = sick

    def __len__(self):
        return len(self.tissue)

    def station_tissue(self, i):
        return self.tissue[i]


def test_the_backbone_probe_reads_station_tissue_where_the_features_hold_it():
    from tests.support.benchmarks import load_benchmark

    mod = load_benchmark("probe_backbone")
    train, valid = _Stations(200, 1), _Stations(100, 2)
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(len(STATION_FIELDS), 24))

    def features(ds, carry):
        noise = rng.normal(size=(len(ds), 24))
        return ds.tissue.sum(axis=1) @ mix + 0.05 * noise if carry else noise

    held = mod.station_probe(features(train, True), features(valid, True), train, valid, 1e-2)
    blind = mod.station_probe(features(train, False), features(valid, False), train, valid, 1e-2)
    assert held["mean_cls_mean_r2"] > 0.9 and blind["mean_cls_mean_r2"] < 0.1
    assert held["true_station_tissue_probe_auc_lymphadenopathy"] > 0.95
