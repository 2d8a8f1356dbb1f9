"""Stage 1's per-image heart objective (issue 18): each model image's share of each heart structure,
from the generator's geometry on the model grid; regressed from each image's CLS; a resume may switch
it on (and so may the per-image station objective, ``test_station_tissue``)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from hyperct.errors import ConfigError
from hyperct.phantom import generate
from hyperct.phantom.canvas import TISSUE
from hyperct.phantom.generator import anatomy_of, heart_of
from hyperct.preprocess import N_IMAGES, resample_hu
from hyperct.training.cache import PreprocessCache
from hyperct.training.datasets import PhantomDataset
from hyperct.training.heart_slices import (
    HEART_SLICES,
    SLICE_FIELDS,
    image_volumes,
    model_grid,
    phantom_image_volumes,
)
from hyperct.training.pretrain import load_pretrain_config, pretrain_backbone, resume_config
from hyperct.training.station_tissue import STATION_FIELDS
from tests.support.training import v1_pretrain_config

MYO = SLICE_FIELDS.index("myocardium")


def test_the_model_grid_is_where_resample_hu_samples_the_phantom():
    # the oracle: the myocardium the generator paints, resampled as the model reads the scan, image by
    # image, against the geometry evaluated on the model grid
    seed = 21
    ph = generate(seed, matrix=96, n_slices=70, noise=False)
    painted = (ph.tissue == TISSUE["myocardium"]).astype(np.float32)
    anatomy = anatomy_of(seed, matrix=96, n_slices=70)
    g = model_grid(anatomy.grid)
    voxel_ml = float(np.prod(g.spacing)) / 1000.0
    read = resample_hu(painted).numpy().reshape(N_IMAGES, -1).sum(axis=1) * voxel_ml
    ours = image_volumes(anatomy)[:, MYO]
    assert ours.shape == (N_IMAGES,) and ours.sum() > 50.0
    assert np.corrcoef(read, ours)[0, 1] > 0.98
    assert abs(read.sum() - ours.sum()) < 0.08 * ours.sum()
    # shifted by one image, the agreement drops: the alignment is what is tested
    assert np.corrcoef(read[1:], ours[:-1])[0, 1] < np.corrcoef(read, ours)[0, 1] - 0.02


def test_anatomy_of_is_the_geometry_generate_paints():
    seed = 33
    ph = generate(seed, matrix=48, n_slices=30, noise=False)
    anatomy = anatomy_of(seed, matrix=48, n_slices=30)
    assert anatomy.grid.shape == ph.volume.shape
    assert anatomy.grid.spacing == pytest.approx(ph.volume.spacing)
    assert anatomy.heart.shape == heart_of(seed)


def test_chamber_shares_add_up_to_the_chamber_volumes_and_follow_them():
    seed = 40
    normal = phantom_image_volumes(seed, {}, matrix=96)
    shape = heart_of(seed, {})
    ra = normal[:, SLICE_FIELDS.index("ra_cavity")].sum()
    assert ra == pytest.approx(shape.ra_volume, rel=0.12)
    # images above and below the heart hold none of it; the heart spans a band of images
    inside = normal[:, SLICE_FIELDS.index("heart")] > 0
    assert 8 <= inside.sum() < N_IMAGES - 10 and not inside[0] and not inside[-1]
    # the same patient with an enlarged left atrium: more LA, the same RA, in the same images
    big = phantom_image_volumes(seed, ["atrial_chamber_enlargement"], matrix=96)
    assert heart_of(seed, ["atrial_chamber_enlargement"]).la_volume > shape.la_volume + 5
    la = SLICE_FIELDS.index("la_cavity")
    assert big[:, la].sum() > normal[:, la].sum() + 5.0
    rv = SLICE_FIELDS.index("rv_cavity")
    assert big[:, rv].sum() == pytest.approx(normal[:, rv].sum(), rel=0.02)


def test_a_wider_pulmonary_artery_fills_more_of_the_images_it_crosses():
    from hyperct.phantom.heart import HeartShape

    seed = 41
    anatomy = anatomy_of(seed, {}, matrix=64)
    base = image_volumes(anatomy)
    wide_shape = replace(anatomy.heart.shape, pa_diam=anatomy.heart.shape.pa_diam + 10.0)
    assert isinstance(wide_shape, HeartShape)
    from hyperct.phantom.generator import _anatomy
    from hyperct.phantom.params import sample_habitus

    _, heart, _, med = _anatomy(seed, sample_habitus(seed), wide_shape, 2.5)
    wide = image_volumes(replace(anatomy, heart=heart, med=med))
    pa = SLICE_FIELDS.index("pa")
    assert wide[:, pa].sum() > 1.3 * base[:, pa].sum()
    lv = SLICE_FIELDS.index("lv_cavity")
    np.testing.assert_allclose(wide[:, lv], base[:, lv], atol=1e-4)


def test_the_dataset_keeps_each_phantoms_shares_in_the_cache(tmp_path):
    cache = PreprocessCache(tmp_path / "c")
    ds = PhantomDataset(2, 900, matrix=32, n_slices=12, pair="drop_one", cache=cache, prepare=False)
    first = ds.heart_slices(1)
    assert first.shape == (N_IMAGES, len(SLICE_FIELDS)) and first.dtype == np.float32
    expected = phantom_image_volumes(ds.seeds[1], ds.findings_for(1), matrix=32, n_slices=12)
    np.testing.assert_array_equal(first, expected)
    stored = cache.get_array(ds._key(1), HEART_SLICES)
    np.testing.assert_array_equal(stored, first)
    # an array of the wrong shape in the cache (damaged, or another version) is computed again
    cache.put_array(ds._key(1), HEART_SLICES, np.zeros((3, 2), dtype=np.float32))
    np.testing.assert_array_equal(ds.heart_slices(1), first)
    # and so is one holding a NaN
    cache.put_array(ds._key(1), HEART_SLICES, np.full_like(first, np.nan))
    np.testing.assert_array_equal(ds.heart_slices(1), first)


@pytest.mark.slow
def test_a_prefetched_block_comes_with_its_shares_computed_in_the_workers(tmp_path):
    """With the per-image objective on, the background generation of the next block also computes
    each phantom's shares (off the training loop), the same numbers the dataset computes itself;
    without it, none are computed."""
    from hyperct.training.pretrain import _Blocks

    cfg = v1_pretrain_config(tmp_path, count=2)
    cfg.data.prepare_workers = 1
    for wanted in (True, False):
        cache = PreprocessCache(tmp_path / f"cache-{wanted}", compress=True)
        blocks = _Blocks(cfg.data, cache, None, heart_slices=wanted)
        try:
            blocks.prefetch(1)
            ds = blocks.get(1)
        finally:
            blocks.close()
        stored = [cache.get_array(ds._key(i), HEART_SLICES) for i in range(len(ds))]
        if not wanted:
            assert all(s is None for s in stored)
            continue
        assert len(ds) == 4 and all(s is not None for s in stored)
        for i in (0, 3):
            expected = phantom_image_volumes(
                ds.seeds[i], ds.findings_for(i), matrix=ds.matrix, n_slices=ds.n_slices
            )
            np.testing.assert_array_equal(stored[i], expected)


def test_the_per_image_heart_objective_needs_whole_images_of_phantoms():
    with pytest.raises(ConfigError, match="heart_slice_loss_weight"):
        load_pretrain_config(
            None,
            {
                "data": {"train": {"type": "phantom", "count": 2}},
                "optim": {"heart_slice_loss_weight": 1, "crop_size": 64},
            },
        )


@pytest.mark.slow
@pytest.mark.parametrize(
    "setting, head, what, key, fields",
    [
        ("heart_slice_loss_weight", "heart_slices", "heart", "heart_slice", SLICE_FIELDS),
        ("station_loss_weight", "stations", "station", "station", STATION_FIELDS),
        ("station_excess_loss_weight", "station_excess", "station excess", "station_excess", STATION_FIELDS),
    ],
)
def test_switching_a_per_image_objective_on_at_a_resume_fits_then_trains_its_head(
    tmp_path, capsys, setting, head, what, key, fields
):
    cfg = v1_pretrain_config(tmp_path, count=2, epochs=1)
    out = tmp_path / "bb"
    pretrain_backbone(cfg, out)
    again = resume_config(out, epochs=2, sets=[f"optim.{setting}=1.0"])
    capsys.readouterr()
    pretrain_backbone(again, out, resume=True)
    said = capsys.readouterr()
    assert f"new per-image {what} head fitted to the backbone's CLS" in said.out + said.err
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert f"{key}_loss" not in log[0] and log[1][f"{key}_loss"] > 0
    r2 = log[1]["valid"][f"{key}_r2"]
    assert r2 and set(r2) <= set(fields) and log[1]["valid"][f"mean_{key}_r2"] is not None
    names = json.loads((out / "last" / "state.json").read_text())["param_names"]
    assert any(n.startswith(f"heads.{head}.") for group in names for n in group)
