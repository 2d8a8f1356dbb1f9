"""Backbone pretraining on phantom slices (stage 1 of the demo) and the token labels it learns from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from hyperct.findings import catalogue
from hyperct.network.backbone import load_backbone
from hyperct.preprocess import model_to_source_coords
from hyperct.training.token_labels import TOKEN_SHAPE, token_labels
from tests.support.models import TINY_BACKBONE

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


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


@pytest.mark.parametrize("shape", [(300, 192, 192), (110, 144, 144), (60, 64, 64), (40, 30, 30)])
def test_labels_of_a_coarser_patch_are_the_or_of_the_finest_ones(shape):
    from hyperct.training.token_labels import coarsen, token_shape

    rng = np.random.default_rng(sum(shape))
    masks = {}
    for fid in ("lung_nodule", "coronary_artery_wall_calcification", "emphysema"):
        m = np.zeros(shape, bool)
        for _ in range(6):  # a few small blobs
            k, j, i = (int(rng.integers(0, n - 2)) for n in shape)
            m[k : k + 2, j : j + 2, i : i + 2] = True
        masks[fid] = m
    fine = token_labels(masks, shape, patch=8)
    assert fine.shape == token_shape(8) == (55, 18, 18, 25)
    for patch in (16, 24, 48):
        direct = token_labels(masks, shape, patch=patch)
        assert direct.shape == token_shape(patch)
        np.testing.assert_array_equal(coarsen(fine, patch), direct)
    assert fine.sum() > token_labels(masks, shape).sum()  # the fine grid tells more tokens apart


@pytest.mark.parametrize("patch", [4, 12, 32])
def test_token_labels_need_a_patch_that_tiles_the_image_in_fine_tokens(patch):
    with pytest.raises(ValueError, match=f"patch size {patch}"):
        token_labels({}, (55, 144, 144), patch=patch)


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
                "valid": dict(phantoms, count=7, first_seed=950),
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
    assert "volume_auc" not in report["log"][-1]["valid"]  # objective off: no volume head
    # the 6 training phantoms and the 4 that validate, not all 7 of data.valid
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 6 + 4
    backbone = load_backbone(out)  # the users' DINOv3 path
    fresh = __import__("hyperct.network.backbone", fromlist=["x"]).build_backbone(dict(TINY_BACKBONE), seed=3)
    a = backbone.state_dict()["model.layer.0.mlp.up_proj.weight"]
    assert not torch.equal(a, fresh.state_dict()["model.layer.0.mlp.up_proj.weight"])
    with pytest.raises(Exception, match="already exists"):
        pretrain_backbone(cfg, tmp_path / "bb")


def test_pretrain_config_errors_name_the_field(tmp_path):
    from hyperct.errors import ConfigError
    from hyperct.training.pretrain import load_pretrain_config, pretrain_backbone

    with pytest.raises(ConfigError, match="optim.learning_rate: unknown field"):
        load_pretrain_config(
            None, {"data": {"train": {"type": "phantom", "count": 2}}, "optim": {"learning_rate": 1}}
        )
    with pytest.raises(ConfigError, match=r"^seeds: unknown field \(allowed: seed, .*did you mean seed\?"):
        load_pretrain_config(None, {"seeds": 1})
    with pytest.raises(ConfigError, match="needs a phantom dataset"):
        load_pretrain_config(None, {"data": {"train": {"type": "manifest", "csv": "x.csv"}}})
    # a mapping handed to the run is validated before anything is written
    with pytest.raises(ConfigError, match="needs a phantom dataset"):
        pretrain_backbone({"data": {"train": {"type": "manifest", "csv": "x.csv"}}}, tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("optim.epochs=0", "optim.epochs: expected a positive integer, got 0"),
        ("optim.lr=fast", "optim.lr: expected a number >= 0, got 'fast'"),
        ("optim.loss=l2", "optim.loss: expected one of bce, balanced, focal, got 'l2'"),
        ("optim.positive_fraction=2", "optim.positive_fraction: expected a number in [0, 1], got 2"),
        ("data.cache_dtype=int16", "data.cache_dtype: expected one of uint8, float16, got 'int16'"),
        ("data.block_epochs=0", "data.block_epochs: expected an integer >= 1, got 0"),
        ("data.keep_blocks=maybe", "data.keep_blocks: expected true or false, got 'maybe'"),
        ("valid.phantoms=-1", "valid.phantoms: expected a positive integer, got -1"),
        ("seed=1.5", "seed: expected an integer >= 0, got 1.5"),
        ("backbone=huge", "backbone: expected one of "),
        ("data.fresh_seeds=true", "data.fresh_seeds: needs data.cache_dir"),
    ],
)
def test_every_pretrain_field_is_checked_once_at_load(tmp_path, item, message):
    from hyperct.errors import ConfigError
    from hyperct.training.pretrain import PretrainConfig

    path = tmp_path / "stage1.yaml"
    path.write_text("data: {train: {type: phantom, count: 2}}\n")
    with pytest.raises(ConfigError) as err:
        PretrainConfig.load(path, sets=[item])
    assert str(err.value).startswith(message) and str(path) in str(err.value)


def test_typed_pretrain_config_is_the_validated_mapping(tmp_path):
    from hyperct.training.pretrain_config import DEFAULTS, PretrainConfig, load_pretrain_config

    over, sets = {"optim": {"epochs": 3}}, ["optim.lr=2e-4", "data.train.count=7"]
    for name in ("demo_backbone", "demo_backbone_v1", "demo_backbone_volume"):
        path = CONFIGS / f"{name}.yaml"
        raw = yaml.safe_load(path.read_text())
        typed = PretrainConfig.load(path, over, sets)
        mapping = load_pretrain_config(path, over, sets)
        assert typed.to_dict() == mapping and list(mapping) == list(DEFAULTS)
        assert list(mapping["optim"]) == list(DEFAULTS["optim"])
        assert typed.optim.lr == 2e-4 and typed.optim.epochs == 3 and typed.data.train["count"] == 7
        # every other value is the file's (a section's missing fields keep their defaults)
        for key, value in raw.items():
            for sub, v in value.items() if isinstance(value, dict) else [(None, value)]:
                got = mapping[key] if sub is None else mapping[key][sub]
                want = v if (key, sub) != ("data", "train") else dict(v, count=7)
                assert (key, sub) in (("optim", "lr"), ("optim", "epochs")) or got == want, (name, key, sub)
        assert typed.optim.bag == (raw["optim"].get("bag_loss_weight", 0) > 0)
        # a run folder's pretrain_config.yaml reads back as the same configuration
        saved = tmp_path / f"{name}.yaml"
        saved.write_text(typed.dump())
        assert PretrainConfig.load(saved) == typed
        assert yaml.safe_load(saved.read_text()) == mapping
    assert PretrainConfig().to_dict() == DEFAULTS and DEFAULTS["optim"]["bag_max"] == 55
    assert PretrainConfig.coerce(typed) is typed


def test_volume_objective_pools_the_mean_cls_and_ignores_unlabelled_findings():
    from hyperct.training.pretrain import PretrainHeads, masked_bce, volume_logits

    torch.manual_seed(0)
    heads = PretrainHeads(8, 3)
    cls = torch.randn(2 * 55, 8)
    got = volume_logits(heads, cls, 2)
    want = heads.volume(torch.stack([cls[:55].mean(0), cls[55:].mean(0)]))
    torch.testing.assert_close(got, want)

    logits = torch.tensor([[0.3, -1.0, 2.0], [1.5, 0.2, -0.7]])
    labels = torch.tensor([[1, -1, 0], [-1, 0, 1]])
    pw = torch.tensor(2.0)
    known = labels >= 0
    ref = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[known], labels[known].float(), pos_weight=pw
    )
    torch.testing.assert_close(masked_bce(logits, labels, pw), ref)
    moved = logits.clone()
    moved[~known] += 5.0  # unlabelled entries carry no loss
    torch.testing.assert_close(masked_bce(moved, labels, pw), ref)
    assert float(masked_bce(logits, torch.full_like(labels, -1), pw)) == 0.0


def test_heads_without_the_volume_objective_draw_the_same_random_numbers_as_before():
    # stage 1 of the shipped demo (volume objective off) must still reproduce its backbone
    from hyperct.training.pretrain import PretrainHeads

    torch.manual_seed(5)
    heads = PretrainHeads(8, 3, volume=False)
    after = torch.rand(4)
    torch.manual_seed(5)
    token, image = torch.nn.Linear(8, 3), torch.nn.Linear(8, 3)
    torch.testing.assert_close(heads.token.weight, token.weight)
    torch.testing.assert_close(heads.image.weight, image.weight)
    torch.testing.assert_close(after, torch.rand(4))
    assert heads.volume is None


def test_volume_objective_needs_every_image_of_the_phantom():
    from hyperct.errors import ConfigError
    from hyperct.training.pretrain import PretrainConfig, load_pretrain_config

    train = {"type": "phantom", "count": 2}
    with pytest.raises(ConfigError, match="optim.volume_loss_weight.*images_per_phantom to 55"):
        load_pretrain_config(None, {"data": {"train": train}, "optim": {"volume_loss_weight": 1.0}})
    cfg = PretrainConfig.load(
        None, {"data": {"train": train}, "optim": {"volume_loss_weight": 1.0, "images_per_phantom": 55}}
    )
    assert cfg.optim.volume_loss_weight == 1.0 and cfg.optim.volume and not cfg.optim.bag


def _saved_start(tmp_path):
    """A tiny backbone saved as a DINOv3 folder (``tmp_path/start``), and small phantoms to train it on."""
    from hyperct.network.backbone import build_backbone, save_backbone

    start = build_backbone(dict(TINY_BACKBONE), seed=11)
    save_backbone(start, tmp_path / "start")
    return start, {"type": "phantom", "matrix": 48, "n_slices": 24, "findings": {"pleural_effusion": 0.5}}


@pytest.mark.slow
def test_pretraining_can_continue_from_a_backbone_folder_with_the_volume_objective(tmp_path):
    from hyperct.training.pretrain import PretrainConfig, pretrain_backbone

    start, phantoms = _saved_start(tmp_path)
    base = {
        "seed": 3,
        "backbone": dict(TINY_BACKBONE),
        "init": str(tmp_path / "start"),
        "data": {
            "train": dict(phantoms, count=4, first_seed=900),
            "valid": dict(phantoms, count=4, first_seed=950),
            "cache_dir": str(tmp_path / "cache"),
        },
        "optim": {
            "epochs": 1,
            "warmup_steps": 1,
            "phantoms_per_step": 2,
            "images_per_phantom": 55,
            "volume_loss_weight": 1.0,
            "lr": 0.0,  # nothing moves: the written backbone must be the init folder's
        },
        "valid": {"phantoms": 4},
    }
    out = pretrain_backbone(PretrainConfig.load(None, base), tmp_path / "same")
    written = load_backbone(out).state_dict()
    for key, value in start.state_dict().items():
        torch.testing.assert_close(written[key], value, msg=key)
    report = json.loads((out / "pretrain.json").read_text())
    assert "pleural_effusion" in report["log"][-1]["valid"]["volume_auc"]

    base["optim"]["lr"] = 3e-3
    moved = load_backbone(pretrain_backbone(PretrainConfig.load(None, base), tmp_path / "moved"))
    key = "model.layer.0.mlp.up_proj.weight"
    assert not torch.equal(moved.state_dict()[key], start.state_dict()[key])

    base["init"] = str(tmp_path / "nowhere")
    with pytest.raises(Exception, match="backbone folder does not exist"):
        pretrain_backbone(PretrainConfig.load(None, base), tmp_path / "x")


def test_pretraining_can_start_a_smaller_patch_from_a_trained_backbone(tmp_path):
    from hyperct.errors import ConfigError
    from hyperct.network.backbone import repatch_backbone
    from hyperct.training.pretrain import PretrainConfig, pretrain_backbone

    start, phantoms = _saved_start(tmp_path)
    base = {
        "seed": 3,
        "init": str(tmp_path / "start"),
        "init_patch_size": 8,
        "data": {"train": dict(phantoms, count=2, first_seed=900), "cache_dir": str(tmp_path / "cache")},
        "optim": {"epochs": 1, "warmup_steps": 1, "phantoms_per_step": 2, "images_per_phantom": 2, "lr": 0.0},
    }
    out = pretrain_backbone(PretrainConfig.load(None, base), tmp_path / "p8")
    written = load_backbone(out)
    assert written.config.patch_size == 8  # and its tokens: the trained kernel summed 2x2
    want = repatch_backbone(start, 8).state_dict()
    for key, value in written.state_dict().items():
        torch.testing.assert_close(value, want[key], msg=key)

    with pytest.raises(ConfigError, match="init_patch_size.*divide"):
        pretrain_backbone(PretrainConfig.load(None, dict(base, init_patch_size=12)), tmp_path / "p12")
    with pytest.raises(ConfigError, match="init_patch_size.*init"):
        PretrainConfig.load(None, {"data": base["data"], "init_patch_size": 8})


def test_pretraining_can_add_hu_windows_to_a_trained_backbone_and_resume_with_them(tmp_path):
    from hyperct.errors import ConfigError
    from hyperct.network.windows import DEMO_WINDOWS, add_windows
    from hyperct.training.pretrain import PretrainConfig, pretrain_backbone, resume_config

    start, phantoms = _saved_start(tmp_path)
    windows = [list(w) for w in DEMO_WINDOWS]
    base = {
        "seed": 3,
        "init": str(tmp_path / "start"),
        "init_hu_windows": windows,
        "data": {"train": dict(phantoms, count=2, first_seed=900), "cache_dir": str(tmp_path / "cache")},
        "optim": {"epochs": 1, "warmup_steps": 1, "phantoms_per_step": 2, "images_per_phantom": 2, "lr": 0.0},
    }
    written = load_backbone(pretrain_backbone(PretrainConfig.load(None, base), tmp_path / "same"))
    assert written.config.hu_windows == windows
    want = add_windows(start, DEMO_WINDOWS).state_dict()  # lr 0: the windowed start, window kernels zero
    assert set(written.state_dict()) == set(want)
    for key, value in written.state_dict().items():
        torch.testing.assert_close(value, want[key], msg=key)

    base["optim"]["lr"] = 3e-3
    out = pretrain_backbone(PretrainConfig.load(None, base), tmp_path / "moved")
    stem = load_backbone(out).embeddings.patch_embeddings
    assert stem.weight[:, 3:].abs().sum() > 0 and stem.pooled.weight.abs().sum() > 0  # the windows learn
    resumed = load_backbone(pretrain_backbone(resume_config(out, epochs=2), out, resume=True))
    assert resumed.config.hu_windows == windows  # the run folder's own backbone, windows included
    assert len((out / "log.jsonl").read_text().splitlines()) == 2

    windowed = tmp_path / "windowed"
    from hyperct.network.backbone import save_backbone

    save_backbone(add_windows(start, DEMO_WINDOWS), windowed)
    with pytest.raises(ConfigError, match="init_hu_windows: the init backbone has HU windows already"):
        pretrain_backbone(PretrainConfig.load(None, dict(base, init=str(windowed))), tmp_path / "twice")
