"""Stage 1's teacher objective (issue 18): a small per-image CNN's features, kept in a teacher folder,
regressed from each image's CLS; the folder is untrusted input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hyperct.errors import ConfigError
from hyperct.preprocess import N_IMAGES
from hyperct.training.cache import PreprocessCache
from hyperct.training.datasets import PhantomDataset
from hyperct.training.pretrain import load_pretrain_config, pretrain_backbone, resume_config
from hyperct.training.teacher import (
    MIN_SPREAD,
    N_FEATURES,
    WEIGHTS_FILE,
    TeacherError,
    image_cnn,
    image_features,
    load_teacher,
    reduced_volume,
    save_teacher,
    teacher_cache_name,
    use_teacher,
)
from tests.support.training import v1_pretrain_config


def random_volumes(n: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, N_IMAGES, size, size, generator=g).half()


def made_teacher(folder, seed: int = 0):
    torch.manual_seed(seed)
    cnn = image_cnn()
    return cnn, save_teacher(cnn, random_volumes(seed=seed), folder, {"test": True})


def test_a_kept_teacher_gives_the_features_it_was_saved_with(tmp_path):
    cnn, folder = made_teacher(tmp_path / "t")
    teacher = load_teacher(folder)
    hu = np.random.default_rng(1).normal(0, 300, size=(3 * N_IMAGES, 32, 32)).astype(np.float32)
    got = teacher.features(hu)
    cnn.eval()
    with torch.no_grad():
        want = image_features(cnn, torch.from_numpy(reduced_volume(hu))[None])[0].numpy()
    assert got.shape == (N_IMAGES, N_FEATURES) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert json.loads((folder / "teacher.json").read_text())["trained"] == {"test": True}
    # the digest names the features cached beside each phantom: another teacher, another name
    _, other = made_teacher(tmp_path / "u", seed=1)
    assert load_teacher(other).identity != teacher.identity


def test_standardised_features_are_in_spreads_and_near_constant_ones_are_left_out(tmp_path):
    _, folder = made_teacher(tmp_path / "t")
    teacher = load_teacher(folder)
    teacher.mean = np.arange(N_FEATURES, dtype=np.float64)
    teacher.spread = np.full(N_FEATURES, 2.0)
    teacher.spread[:3] = MIN_SPREAD / 10  # (a dead ReLU channel: the same over every image)
    feats = np.ones((N_IMAGES, N_FEATURES), dtype=np.float32) * 5.0
    z = teacher.standardise(feats)
    assert (z[:, :3] == 0).all()
    np.testing.assert_allclose(z[0, 3:], (5.0 - np.arange(3, N_FEATURES)) / 2.0)


@pytest.mark.parametrize("damage", ["missing", "truncated", "wrong_shape", "nan"])
def test_a_damaged_teacher_folder_is_refused_with_what_to_do(tmp_path, damage):
    from safetensors.torch import load_file, save_file

    _, folder = made_teacher(tmp_path / "t")
    path = folder / WEIGHTS_FILE
    if damage == "missing":
        path.unlink()
        expect = "is missing"
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
        expect = "cannot be read"
    else:
        tensors = load_file(str(path))
        if damage == "wrong_shape":
            tensors["mean"] = torch.zeros(7)
            expect = "does not hold"
        else:
            tensors["spread"][5] = float("nan")
            expect = "non-finite"
        save_file(tensors, str(path))
    with pytest.raises(TeacherError, match=expect) as err:
        load_teacher(folder)
    assert "make" in str(err.value)  # what to do


def test_a_phantoms_teacher_features_are_cached_under_the_teachers_name(tmp_path):
    _, folder = made_teacher(tmp_path / "t")
    teacher = use_teacher(folder)
    cache = PreprocessCache(tmp_path / "cache")
    ds = PhantomDataset(1, 900, matrix=32, n_slices=3 * N_IMAGES, cache=cache, prepare=False)
    got = ds.teacher_features(0)
    np.testing.assert_array_equal(got, teacher.features(ds.model_hu(0)))
    name = teacher_cache_name()
    assert name.endswith(teacher.identity)
    np.testing.assert_array_equal(cache.get_array(ds._key(0), name), got)
    # damaged in the cache: computed again
    cache.put_array(ds._key(0), name, np.full_like(got, np.nan))
    np.testing.assert_array_equal(ds.teacher_features(0), got)


@pytest.mark.parametrize(
    "optim",
    [{"teacher_loss_weight": 1}, {"teacher_loss_weight": 1, "teacher": "t", "crop_size": 64}],
)
def test_the_teacher_objective_needs_its_folder_and_whole_images(optim):
    with pytest.raises(ConfigError, match="teacher_loss_weight"):
        load_pretrain_config(None, {"data": {"train": {"type": "phantom", "count": 2}}, "optim": optim})


@pytest.mark.slow
def test_switching_the_teacher_on_at_a_resume_fits_then_trains_its_head(tmp_path, capsys):
    _, folder = made_teacher(tmp_path / "t")
    cfg = v1_pretrain_config(tmp_path, count=2, epochs=1)
    out = tmp_path / "bb"
    pretrain_backbone(cfg, out)
    bad = resume_config(
        out, epochs=2, sets=["optim.teacher_loss_weight=1.0", f"optim.teacher={tmp_path / 'none'}"]
    )
    with pytest.raises(ConfigError, match="optim.teacher: no stage-1 teacher"):
        pretrain_backbone(bad, out, resume=True)
    again = resume_config(out, epochs=2, sets=["optim.teacher_loss_weight=1.0", f"optim.teacher={folder}"])
    capsys.readouterr()
    pretrain_backbone(again, out, resume=True)
    said = capsys.readouterr()
    assert "new per-image teacher head fitted to the backbone's CLS" in said.out + said.err
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert "teacher_loss" not in log[0] and log[1]["teacher_loss"] > 0
    assert log[1]["valid"]["mean_teacher_r2"] is not None
