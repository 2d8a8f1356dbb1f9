"""Backbone pretraining on phantom slices (stage 1 of the demo) and the token labels it learns from."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hyperct.findings import catalogue
from hyperct.model.backbone import load_backbone
from hyperct.preprocess import model_to_source_coords
from hyperct.training.token_labels import TOKEN_SHAPE, token_labels
from tests.engine.conftest import TINY_BACKBONE


def _expected_token(k, j, i, shape):
    """Token of source voxel (k, j, i), from the preprocessing's own half-pixel mapping."""
    z, y, x = shape
    # model index whose sample interval contains the source voxel centre
    mk = int(np.floor((k + 0.5) * 165 / z))
    mj = int(np.floor((j + 0.5) * 144 / y))
    mi = int(np.floor((i + 0.5) * 144 / x))
    # the model sample centre of that index maps back near the voxel
    assert abs(model_to_source_coords(165, z)[mk] - k) <= z / 165
    return mk // 3, mj // 16, mi // 16


@pytest.mark.parametrize("shape", [(300, 192, 192), (120, 512, 512), (165, 144, 144)])
def test_a_single_voxel_lands_in_exactly_its_token(shape):
    rng = np.random.default_rng(sum(shape))
    for _ in range(5):
        k, j, i = (int(rng.integers(0, n)) for n in shape)
        mask = np.zeros(shape, bool)
        mask[k, j, i] = True
        tl = token_labels({"lung_nodule": mask}, shape)
        assert tl.shape == TOKEN_SHAPE
        hot = np.argwhere(tl[..., catalogue().index("lung_nodule")])
        assert [tuple(h) for h in hot] == [_expected_token(k, j, i, shape)]
        assert tl.sum() == 1


def test_full_masks_cover_every_token_and_other_findings_stay_empty():
    shape = (60, 50, 50)  # coarser than the token grid in-plane: every token still gets a source voxel
    tl = token_labels({"emphysema": np.ones(shape, bool), "cardiomegaly": np.zeros(shape, bool)}, shape)
    assert tl[..., catalogue().index("emphysema")].all()
    assert tl.sum() == 55 * 81


@pytest.mark.slow
def test_pretraining_writes_a_dinov3_folder_that_stage_2_can_use(tmp_path):
    from hyperct.training.pretrain import load_pretrain_config, pretrain_backbone

    phantoms = {
        "type": "phantom",
        "matrix": 48,
        "n_slices": 24,
        "findings": {"pleural_effusion": 0.6, "cardiomegaly": 0.6},
    }
    cfg = load_pretrain_config(
        None,
        {
            "seed": 3,
            "backbone": dict(TINY_BACKBONE),
            "data": {
                "train": dict(phantoms, count=6, first_seed=900),
                "valid": dict(phantoms, count=4, first_seed=950),
                "cache_dir": str(tmp_path / "cache"),
            },
            "optim": {
                "epochs": 3,
                "warmup_steps": 2,
                "phantoms_per_step": 2,
                "images_per_phantom": 8,
                "lr": 3e-3,
            },
            "valid": {"phantoms": 4},
        },
    )
    out = pretrain_backbone(cfg, tmp_path / "bb")
    report = json.loads((out / "pretrain.json").read_text())
    losses = [e["loss"] for e in report["log"]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert "pleural_effusion" in report["log"][-1]["valid"]["image_auc"]
    backbone = load_backbone(out)  # the users' DINOv3 path
    fresh = __import__("hyperct.model.backbone", fromlist=["x"]).build_backbone(dict(TINY_BACKBONE), seed=3)
    a = backbone.state_dict()["model.layer.0.mlp.up_proj.weight"]
    assert not torch.equal(a, fresh.state_dict()["model.layer.0.mlp.up_proj.weight"])
    with pytest.raises(Exception, match="already exists"):
        pretrain_backbone(cfg, tmp_path / "bb")


def test_pretrain_config_errors_name_the_field(tmp_path):
    from hyperct.errors import ConfigError
    from hyperct.training.pretrain import load_pretrain_config

    with pytest.raises(ConfigError, match="optim.learning_rate: unknown field"):
        load_pretrain_config(
            None, {"data": {"train": {"type": "phantom", "count": 2}}, "optim": {"learning_rate": 1}}
        )
    with pytest.raises(ConfigError, match="needs a phantom dataset"):
        load_pretrain_config(None, {"data": {"train": {"type": "manifest", "csv": "x.csv"}}})
