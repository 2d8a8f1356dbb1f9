"""Stage 1's heart-geometry objective (issue 18): the phantom's heart numbers drawn without rendering,
standardised by the population, regressed from the bags' mean CLS; a resume may switch it on."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from hyperct.errors import CheckpointError, ConfigError
from hyperct.phantom import generate
from hyperct.phantom.generator import heart_of
from hyperct.training.datasets import PhantomDataset
from hyperct.training.heart_geometry import HEART_FIELDS, heart_scale, r2_scores, standardised
from hyperct.training.pretrain import (
    _new_heads,
    load_pretrain_config,
    pretrain_backbone,
    resume_config,
)
from tests.support.training import v1_pretrain_config


@pytest.mark.parametrize("findings", [None, {}, {"ventricular_enlargement": 0.8, "lung_nodule": 0.5}])
def test_the_heart_drawn_without_rendering_is_the_one_the_generator_renders(findings):
    for seed in (3, 11):
        rendered = generate(seed, findings, matrix=32, n_slices=12).cardiac["heart_shape"]
        assert asdict(heart_of(seed, findings)) == rendered


def test_a_drop_one_dataset_knows_the_heart_of_each_phantom_and_twin():
    ds = PhantomDataset(2, 700, matrix=32, n_slices=12, pair="drop_one", prepare=False)
    for i in range(len(ds)):
        assert asdict(ds.heart(i)) == ds.generate(i).cardiac["heart_shape"]
        assert ds.heart(i) is ds.heart(i)  # drawn once: training asks for it every step


def test_standardised_hearts_centre_the_population_and_keep_the_order():
    mean, std = heart_scale()
    assert mean.shape == std.shape == (len(HEART_FIELDS),) and (std > 0).all()
    z = np.stack([standardised(heart_of(seed)) for seed in range(5000, 5300)])
    assert np.abs(z.mean(axis=0)).max() < 0.35  # other seeds than the scale's: near 0 and 1
    assert np.all((z.std(axis=0) > 0.6) & (z.std(axis=0) < 1.5))
    base = heart_of(5000)
    wider = replace(base, lv_radius=base.lv_radius + 3.0)
    k = HEART_FIELDS.index("lv_radius")
    assert standardised(wider)[k] - standardised(base)[k] == pytest.approx(3.0 / std[k], rel=1e-4)


def test_r2_is_one_for_the_truth_and_zero_for_the_population_mean():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(50, len(HEART_FIELDS)))
    assert all(v == 1.0 for v in r2_scores(truth, truth).values())
    assert all(abs(v) < 1e-9 for v in r2_scores(np.tile(truth.mean(0), (50, 1)), truth).values())
    flat = truth.copy()
    flat[:, 0] = 2.0  # a number that does not vary is left out
    assert HEART_FIELDS[0] not in r2_scores(truth, flat)


def test_the_heart_objective_needs_bags_of_phantoms():
    with pytest.raises(ConfigError, match="heart_loss_weight"):
        load_pretrain_config(
            None, {"data": {"train": {"type": "phantom", "count": 2}}, "optim": {"heart_loss_weight": 1}}
        )


def test_a_resume_may_add_heads_but_not_change_the_backbone():
    saved = [["backbone.a", "heads.token.weight"], ["backbone.b"]]
    assert _new_heads(saved, saved) == []
    grown = [["backbone.a", "heads.token.weight", "heads.heart.weight"], ["backbone.b", "heads.heart.bias"]]
    assert _new_heads(saved, grown) == ["heads.heart.weight", "heads.heart.bias"]
    assert _new_heads(saved, [["backbone.a", "backbone.c", "heads.token.weight"], ["backbone.b"]]) is None
    regrouped = [["heads.token.weight"], ["backbone.b"], ["backbone.a"]]  # (embedding_lr_factor)
    assert _new_heads(saved, regrouped) == []  # the moments follow the names
    assert _new_heads(saved, [["backbone.a"], ["backbone.b"]]) is None  # a head lost
    assert _new_heads(None, saved) is None


@pytest.mark.slow
def test_switching_the_heart_objective_on_at_a_resume_trains_its_head_on_the_same_backbone(tmp_path, capsys):
    from hyperct.network.backbone import load_backbone

    cfg = v1_pretrain_config(tmp_path, count=2, epochs=1)
    out = tmp_path / "bb"
    pretrain_backbone(cfg, out)
    before = {k: v.clone() for k, v in load_backbone(out).state_dict().items()}
    (first,) = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert "heart_loss" not in first and "heart_r2" not in first["valid"]

    again = resume_config(out, epochs=3, sets=["optim.heart_loss_weight=1.0"])
    capsys.readouterr()
    pretrain_backbone(again, out, resume=True)
    said = capsys.readouterr()
    assert "new heart head fitted to the backbone's mean CLS" in said.out + said.err
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2, 3]
    assert all(e["heart_loss"] > 0 for e in log[1:])
    r2 = log[-1]["valid"]["heart_r2"]
    assert set(r2) <= set(HEART_FIELDS) and r2 and log[-1]["valid"]["mean_heart_r2"] is not None
    names = json.loads((out / "last" / "state.json").read_text())["param_names"]
    assert any(n.startswith("heads.heart.") for group in names for n in group)
    after = load_backbone(out).state_dict()
    assert any(not torch.equal(after[k], before[k]) for k in before)  # it went on training

    # a resume that drops the heart head again is a different set of heads: refused, not guessed
    (out / "pretrain_config.yaml").write_text(
        resume_config(out, sets=["optim.heart_loss_weight=0"]).dump(), encoding="utf-8"
    )
    with pytest.raises(CheckpointError, match="does not match"):
        pretrain_backbone(resume_config(out, epochs=4), out, resume=True)


def test_ridge_fit_recovers_a_linear_map_and_penalises_noise():
    from hyperct.training.heart_geometry import RIDGE_STRENGTHS, ridge_fit

    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 2.0, size=(200, 12))
    w_true = rng.normal(size=(12, 4))
    y = x @ w_true + 0.5 + 0.01 * rng.normal(size=(200, 4))
    w, b, lam = ridge_fit(x, y)
    assert lam == RIDGE_STRENGTHS[0]
    assert np.abs(x @ w + b - y).max() < 0.1  # features standardised inside, weights returned raw
    _, _, lam_noise = ridge_fit(x, rng.normal(size=(200, 4)))
    assert lam_noise >= 1.0


@pytest.mark.parametrize("head", ["heart", "heart_slices"])
def test_a_new_regression_head_is_the_ridge_solution_on_the_backbones_cls(tmp_path, head):
    # the whole-heart head on each phantom's mean CLS; the per-image head on every image's CLS
    from hyperct.network.backbone import build_backbone
    from hyperct.preprocess import N_IMAGES
    from hyperct.training.cache import PreprocessCache
    from hyperct.training.heart_geometry import ridge_fit
    from hyperct.training.heart_slices import SLICE_FIELDS, standardised_slices
    from hyperct.training.pretrain import PretrainHeads, _ImageSampler, fit_heart_head, fit_slice_head
    from tests.support.models import TINY_BACKBONE

    ds = PhantomDataset(6, 800, matrix=32, n_slices=12, cache=PreprocessCache(tmp_path / "c"))
    torch.manual_seed(0)
    backbone = build_backbone(dict(TINY_BACKBONE), seed=0).eval()
    heads = PretrainHeads(
        backbone.config.hidden_size,
        25,
        volume=False,
        bag=True,
        heart=len(HEART_FIELDS),
        heart_slices=len(SLICE_FIELDS),
    )
    fit = fit_heart_head if head == "heart" else fit_slice_head
    r2, lam = fit(backbone, heads, ds, n=6)
    sampler = _ImageSampler(ds, backbone.config.patch_size)
    with torch.no_grad():
        cls = [
            backbone(pixel_values=sampler.images(i, np.arange(N_IMAGES))[0]).last_hidden_state[:, 0].numpy()
            for i in range(6)
        ]
    if head == "heart":
        x = np.stack([c.mean(axis=0) for c in cls])
        y = np.stack([standardised(ds.heart(i)) for i in range(6)])
    else:
        x = np.concatenate(cls)
        y = np.concatenate([standardised_slices(ds.heart_slices(i)) for i in range(6)])
    with torch.no_grad():
        predicted = getattr(heads, head)(torch.from_numpy(x)).numpy()
    w, b, lam2 = ridge_fit(x, y)
    assert lam == lam2 and r2 is not None
    np.testing.assert_allclose(predicted, x @ w + b, atol=1e-4)  # the head is the ridge solution
