"""Stage 1 v1 (issue 18): the bag objective, positive-aware bag sampling, the per-finding balanced
loss, paired phantoms, fresh seed blocks with resume, the compressed cache, and stage 2's
positive-balanced task draws."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hyperct.findings import catalogue
from hyperct.training.cache import PreprocessCache
from hyperct.training.datasets import PhantomDataset, build_dataset
from hyperct.training.pretrain import (
    PretrainConfig,
    bag_labels,
    finding_loss,
    load_pretrain_config,
    pretrain_backbone,
    resume_config,
    sample_bag,
    token_max_loss,
)
from hyperct.training.token_labels import TOKEN_SHAPE, token_labels
from tests.support.models import TINY_BACKBONE
from tests.support.training import v1_pretrain_config

NODULE = catalogue().index("lung_nodule")
EFFUSION = catalogue().index("pleural_effusion")


# --- bag labels ---------------------------------------------------------------------------------


def test_bag_labels_come_from_the_token_masks_of_the_bag_images():
    shape = (165, 144, 144)  # the model grid: image n = slices 3n..3n+2
    nodule = np.zeros(shape, bool)
    nodule[30:33, 70:74, 40:44] = True  # image 10 only
    effusion = np.zeros(shape, bool)
    effusion[90:150, 100:140, 10:60] = True  # images 30..49
    grid = token_labels({"lung_nodule": nodule, "pleural_effusion": effusion}, shape)
    flat = torch.from_numpy(grid.reshape(TOKEN_SHAPE[0], -1, TOKEN_SHAPE[-1]))

    with_nodule = bag_labels(flat[[3, 10, 20]])
    assert with_nodule[NODULE] == 1 and with_nodule[EFFUSION] == 0
    assert with_nodule.sum() == 1
    both = bag_labels(flat[[10, 35]])
    assert both[NODULE] == 1 and both[EFFUSION] == 1 and both.sum() == 2
    # a bag without any positive token is negative for every finding
    empty = bag_labels(flat[[0, 1, 2, 20, 54]])
    assert empty.shape == (25,) and empty.sum() == 0
    # numpy grids of (images, 9, 9, 25) give the same labels
    assert torch.equal(bag_labels(grid[[3, 10, 20]]), with_nodule)


# --- bag sampling ---------------------------------------------------------------------------------


def _image_pos(nodule_images=(10, 11), effusion_images=range(30, 50)):
    pos = np.zeros((55, 25), bool)
    pos[list(nodule_images), NODULE] = True
    pos[list(effusion_images), EFFUSION] = True
    return pos


def test_bags_hold_at_least_half_positive_images_and_see_small_findings():
    rng = np.random.default_rng(0)
    pos = _image_pos()
    sizes, fractions, nodule_seen = [], [], 0
    for _ in range(400):
        bag = sample_bag(pos, rng, size_min=8, size_max=55, positive_fraction=0.5)
        assert np.array_equal(bag, np.unique(bag)) and bag.min() >= 0 and bag.max() < 55
        sizes.append(len(bag))
        fractions.append(pos[bag].any(axis=1).mean())
        nodule_seen += bool(pos[bag, NODULE].any())
    assert min(fractions) >= 0.5
    assert 8 <= min(sizes) and max(sizes) <= 44  # 22 positive images: at most 44 keeps the fraction
    assert max(sizes) > 30  # sizes vary over the range
    # bags of 8 images: uniform sampling would include one of the 2 nodule images in ~27 % of bags;
    # drawing positives finding by finding includes it in nearly all
    small = [sample_bag(pos, rng, size_min=8, size_max=8) for _ in range(300)]
    assert np.mean([pos[b, NODULE].any() for b in small]) > 0.8
    uniform = [sample_bag(pos, rng, size_min=8, size_max=8, positive_fraction=0.0) for _ in range(300)]
    assert np.mean([pos[b, NODULE].any() for b in uniform]) < 0.45


def test_bags_of_a_phantom_without_findings_are_negative_and_deterministic():
    pos = np.zeros((55, 25), bool)
    a = sample_bag(pos, np.random.default_rng(3), size_min=8, size_max=20)
    b = sample_bag(pos, np.random.default_rng(3), size_min=8, size_max=20)
    assert np.array_equal(a, b) and 8 <= len(a) <= 20
    assert bag_labels(np.zeros((len(a), 81, 25))).sum() == 0
    # too few positive images for half of the bag: the bag shrinks, not below the minimum
    few = _image_pos(nodule_images=(5, 6, 7), effusion_images=())
    for seed in range(20):
        bag = sample_bag(few, np.random.default_rng(seed), size_min=4, size_max=55)
        assert 4 <= len(bag) <= 6 and few[bag].any(axis=1).mean() >= 0.5


# --- balanced loss --------------------------------------------------------------------------------


def test_balanced_loss_weighs_every_finding_equally_whatever_its_size():
    torch.manual_seed(0)
    logits = torch.randn(200, 2)
    labels = torch.zeros(200, 2)
    labels[:3, 0] = 1  # a small finding: 3 positive tokens
    labels[:150, 1] = 1  # a large one: 150
    got = finding_loss(logits, labels, mode="balanced")
    ce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    want = torch.stack(
        [0.5 * (ce[labels[:, k] == 1, k].mean() + ce[labels[:, k] == 0, k].mean()) for k in range(2)]
    ).mean()
    torch.testing.assert_close(got, want)
    # twice as many negatives (each one repeated) change plain BCE, not the balanced loss
    x, y = logits[:, :1], labels[:, :1]
    x2, y2 = torch.cat([x, x[y == 0][:, None]]), torch.cat([y, torch.zeros(int((y == 0).sum()), 1)])
    torch.testing.assert_close(finding_loss(x2, y2, mode="balanced"), finding_loss(x, y, mode="balanced"))
    assert not torch.allclose(finding_loss(x2, y2, mode="bce"), finding_loss(x, y, mode="bce"))
    # a finding without positives in the batch: its negatives' half only, no NaN
    none = finding_loss(logits, torch.zeros_like(labels), mode="balanced")
    assert torch.isfinite(none)
    # focal: confident correct entries weigh less than in the balanced BCE
    confident = torch.where(labels > 0, 6.0, -6.0)
    assert finding_loss(confident, labels, mode="focal") < 1e-3 * finding_loss(
        confident, labels, mode="balanced"
    )


# --- paired phantoms ------------------------------------------------------------------------------


@pytest.mark.parametrize("pair", ["normal", "variant"])
def test_paired_phantoms_share_anatomy_and_differ_only_inside_the_lesion_masks(pair):
    findings = {"pleural_effusion": 1.0, "lung_nodule": 1.0}
    ds = PhantomDataset(2, 4100, matrix=48, n_slices=24, findings=findings, pair=pair)
    assert len(ds) == 4 and ds.seeds == [4100, 4100, 4101, 4101]
    assert [ds.pair_of(i) for i in range(4)] == [1, 0, 3, 2]
    drawn, twin = ds.generate(0), ds.generate(1)
    lesion = np.zeros(drawn.volume.shape, bool)
    for m in list(drawn.masks.values()) + list(twin.masks.values()):
        lesion |= np.asarray(m, bool)
    changed = drawn.volume.hu != twin.volume.hu
    assert changed.any() and not (changed & ~lesion).any()
    assert ds.labels[0, EFFUSION] == 1 and ds.labels[0, NODULE] == 1
    if pair == "normal":
        assert (ds.labels[1] == 0).all() and not ds.token_labels(1).any()
    else:  # the same findings drawn elsewhere
        assert ds.labels[1, EFFUSION] == 1
        assert not np.array_equal(ds.token_labels(0), ds.token_labels(1))
    # the drawn item is the unpaired dataset's phantom (same cache key, same volume)
    single = PhantomDataset(2, 4100, matrix=48, n_slices=24, findings=findings, prepare=False)
    assert single.identity(0) == ds.identity(0) and ds.identity(1) != ds.identity(0)


def test_pair_is_checked_in_dataset_descriptions(tmp_path):
    from hyperct.errors import ConfigError

    with pytest.raises(ConfigError, match="data.train.pair"):
        build_dataset({"type": "phantom", "count": 1, "pair": "twin"}, field="data.train")


# --- the compressed cache -------------------------------------------------------------------------


def test_compressed_cache_round_trip_shares_keys_and_deletes(tmp_path):
    from hyperct.preprocess import IMAGE_SIZE, N_SLICES

    hu = np.full((N_SLICES, IMAGE_SIZE, IMAGE_SIZE), -1000.0, np.float32)
    hu[40:90, 30:100, 30:100] = 40.0
    plain = PreprocessCache(tmp_path, "uint8")
    packed = PreprocessCache(tmp_path, "uint8", compress=True)
    packed.put("a" * 64, hu, {"x": 1})
    packed.put_array("a" * 64, "tokens", np.arange(5))
    npy = tmp_path / "aa" / f"{'a' * 64}.npy"
    z = npy.with_name(npy.name + ".z")
    assert z.is_file() and not npy.exists() and z.stat().st_size < 0.2 * hu.size
    for cache in (plain, packed):  # either reads it, whatever its own flag
        got, info = cache.get("a" * 64)
        assert info["x"] == 1 and np.abs(got - hu).max() < 4.0
        assert cache.contains("a" * 64)
        assert np.array_equal(np.asarray(cache.stored("a" * 64))[45], packed.stored("a" * 64)[45])
    plain.delete("a" * 64)
    assert not packed.contains("a" * 64) and not any((tmp_path / "aa").iterdir())


# --- fresh seeds, stop and resume -----------------------------------------------------------------


@pytest.mark.slow
def test_bag_pretraining_logs_every_epoch_and_resume_continues_on_new_seeds(tmp_path):
    cfg = v1_pretrain_config(tmp_path)
    out = tmp_path / "bb"
    pretrain_backbone(cfg, out, stop_after=1)  # interrupted after epoch 1 of 2 (block 0 has 2 epochs)
    first = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in first] == [1] and first[0]["block"] == 0
    assert first[0]["seeds"] == [60000, 60001]
    assert first[0]["positive_image_fraction"] >= 0.5
    assert first[0]["valid"]["bag_auc"] and first[0]["valid"]["mean_bag_auc"] is not None
    assert (out / "last" / "state.json").is_file() and (out / "model.safetensors").is_file()
    saved = {
        k: v.clone()
        for k, v in __import__("hyperct.network.backbone", fromlist=["x"])
        .load_backbone(out)
        .state_dict()
        .items()
    }

    again = resume_config(out, epochs=3)
    assert again.optim.epochs == 3 and again.data.fresh_seeds
    pretrain_backbone(again, out, resume=True)
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2, 3]
    # the resumed run does not go back to the block it stopped in: new seeds, a new block
    assert log[1]["block"] == 1 and log[1]["seeds"] == [60002, 60003]
    assert log[2]["block"] == 1  # block 1 runs its two epochs
    assert log[1]["step"] == 2 and log[2]["step"] == 3  # the step count (lr schedule) continues

    # block 0 was dropped from the cache when block 1 began (keep_blocks: false); validation stays
    def block(first_seed):
        return PhantomDataset(
            2,
            first_seed,
            matrix=48,
            n_slices=24,
            findings=cfg.data.train["findings"],
            cache=PreprocessCache(tmp_path / "cache"),
            prepare=False,
            pair="normal",
        )

    old, last = block(60000), block(60002)
    assert not any(old.cache.contains(old._key(i)) for i in range(4))
    assert not any(last.cache.contains(last._key(i)) for i in range(4))  # nor the last one, at the end
    vs = cfg.data.valid
    valid = PhantomDataset(
        vs["count"],
        vs["first_seed"],
        matrix=48,
        n_slices=24,
        findings=vs["findings"],
        cache=PreprocessCache(tmp_path / "cache"),
        prepare=False,
    )
    assert all(valid.cache.contains(valid._key(i)) for i in range(len(valid)))  # validation stays
    report = json.loads((out / "pretrain.json").read_text())
    assert len(report["log"]) == 3
    moved = __import__("hyperct.network.backbone", fromlist=["x"]).load_backbone(out).state_dict()
    assert any(not torch.equal(moved[k], saved[k]) for k in saved)


@pytest.mark.slow
def test_a_patch_8_backbone_pretrains_on_the_labels_of_its_own_token_grid(tmp_path):
    from hyperct.network.backbone import load_backbone

    cfg = v1_pretrain_config(tmp_path, epochs=1)
    cfg = PretrainConfig.from_dict(dict(cfg.to_dict(), backbone=dict(TINY_BACKBONE, patch_size=8)))
    out = tmp_path / "p8"
    pretrain_backbone(cfg, out)
    assert load_backbone(out).config.patch_size == 8
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert log[0]["valid"]["token_auc"]  # the token head was scored against 18 x 18 labels per image
    valid = build_dataset(cfg.data.valid, cache=PreprocessCache(tmp_path / "cache"), field="valid")
    fine, coarse = valid.token_labels(0, 8), valid.token_labels(0, 16)
    assert fine.shape == (55, 18, 18, 25) and coarse.shape == TOKEN_SHAPE
    assert fine.any() and (fine.reshape(55, 9, 2, 9, 2, 25).any(axis=(2, 4)) == coarse).all()


def test_a_cache_with_patch_16_labels_only_serves_patch_16_and_regenerates_for_patch_8(tmp_path):
    from hyperct.training.token_labels import PATCH16_LABELS, TOKEN_LABELS

    spec = dict(
        type="phantom", count=1, first_seed=950, matrix=48, n_slices=24, findings={"pleural_effusion": 0.7}
    )
    cache = PreprocessCache(tmp_path / "cache")
    ds = build_dataset(spec, cache=cache, field="valid")
    key = ds._key(0)
    fine, coarse = ds.token_labels(0, 8), ds.token_labels(0, 16)
    # what an older version cached: the volume and patch-16 labels only
    cache.put_array(key, PATCH16_LABELS, np.packbits(coarse))
    cache._paths(key)[0].with_name(f"{key}.{TOKEN_LABELS}.npy").unlink()
    assert cache.get_array(key, TOKEN_LABELS) is None
    stamp = cache._paths(key)[1].stat().st_mtime_ns
    again = build_dataset(spec, cache=cache, field="valid")  # nothing to generate: labels for patch 16
    assert cache._paths(key)[1].stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again.token_labels(0, 16), coarse)
    np.testing.assert_array_equal(again.token_labels(0, 8), fine)  # generated again, now kept
    assert cache.get_array(key, TOKEN_LABELS) is not None


@pytest.mark.slow
def test_resume_starts_from_the_saved_weights(tmp_path):
    from hyperct.network.backbone import load_backbone

    cfg = v1_pretrain_config(tmp_path, epochs=1)
    out = tmp_path / "bb"
    pretrain_backbone(cfg, out)
    before = load_backbone(out).state_dict()
    again = resume_config(out, epochs=2, sets=["optim.lr=0"])  # nothing moves: the saved weights stay
    pretrain_backbone(again, out, resume=True)
    after = load_backbone(out).state_dict()
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, msg=key)
    with pytest.raises(Exception, match="already exists"):
        pretrain_backbone(cfg, out)


def _tiny_run_config(cache, kind):
    phantoms = {"type": "phantom", "matrix": 48, "n_slices": 24, "findings": {"pleural_effusion": 0.7}}
    bag = kind != "plain"
    return PretrainConfig.load(
        None,
        {
            "seed": 7,
            "backbone": dict(TINY_BACKBONE),
            "data": {
                "train": dict(phantoms, count=2, first_seed=61000, pair="normal" if bag else None),
                "cache_dir": str(cache),
                "prepare_workers": 0,
                "fresh_seeds": kind == "fresh",
                "keep_blocks": False,
            },
            "optim": {
                "epochs": 2,
                "warmup_steps": 1,
                "phantoms_per_step": 1,
                "images_per_phantom": 6,
                "lr": 3e-3,
                "loss": "balanced" if bag else "bce",
                "bag_loss_weight": 1.0 if bag else 0.0,
                "bag_min": 4,
                "bag_max": 8,
            },
        },
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["plain", "bag", "fresh"])
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, kind):
    import shutil

    from safetensors.torch import load_file

    def result(out):
        tensors = {
            f: load_file(out / f)
            for f in ("model.safetensors", "last/model.safetensors", "last/optimizer.safetensors")
        }
        log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
        return tensors, [{k: v for k, v in e.items() if k != "seconds"} for e in log]

    whole, parts = tmp_path / "whole" / "bb", tmp_path / "parts" / "bb"
    pretrain_backbone(_tiny_run_config(tmp_path / "whole" / "cache", kind), whole)
    pretrain_backbone(_tiny_run_config(tmp_path / "parts" / "cache", kind), parts, stop_after=1)
    mid = load_file(parts / "model.safetensors")
    if kind == "plain":  # a state written before the generators were saved still resumes
        old = tmp_path / "old" / "bb"
        shutil.copytree(parts, old)
        (old / "last" / "rng.safetensors").unlink()
        doc = json.loads((old / "last" / "state.json").read_text())
        del doc["rng"]
        (old / "last" / "state.json").write_text(json.dumps(doc))
        pretrain_backbone(resume_config(old), old, resume=True)
        assert [e["epoch"] for e in result(old)[1]] == [1, 2]
    pretrain_backbone(resume_config(parts), parts, resume=True)
    (want, want_log), (got, got_log) = result(whole), result(parts)
    assert got_log == want_log and [e["epoch"] for e in got_log] == [1, 2]
    for f in want:
        assert want[f].keys() == got[f].keys()
        for k in want[f]:
            assert torch.equal(want[f][k], got[f][k]), (f, k)
    assert any(not torch.equal(mid[k], got["model.safetensors"][k]) for k in mid)  # epoch 2 moved them


def test_v1_config_checks():
    from hyperct.errors import ConfigError

    train = {"type": "phantom", "count": 2, "pair": "normal"}
    with pytest.raises(ConfigError, match="data.train.pair"):
        load_pretrain_config(None, {"data": {"train": train}})
    with pytest.raises(ConfigError, match="optim.loss"):
        load_pretrain_config(
            None, {"data": {"train": {"type": "phantom", "count": 2}}, "optim": {"loss": "l2"}}
        )
    with pytest.raises(ConfigError, match="bag_min"):
        load_pretrain_config(
            None, {"data": {"train": train}, "optim": {"bag_loss_weight": 1.0, "bag_min": 9, "bag_max": 8}}
        )
    with pytest.raises(ConfigError, match="fresh_seeds"):
        load_pretrain_config(
            None, {"data": {"train": train, "fresh_seeds": True}, "optim": {"bag_loss_weight": 1.0}}
        )


def test_fresh_seed_blocks_never_reach_the_validation_seeds(tmp_path):
    from hyperct.errors import ConfigError
    from hyperct.training.pretrain import _check_block_seeds, block_spec

    spec = {"type": "phantom", "count": 100, "first_seed": 199800}
    valid = {"type": "phantom", "count": 200, "first_seed": 200000}
    assert block_spec(spec, 1)["first_seed"] == 199900
    _check_block_seeds(block_spec(spec, 1), valid, 1)
    with pytest.raises(ConfigError, match="validation seeds"):
        _check_block_seeds(block_spec(spec, 2), valid, 2)


# --- stage 2: task draws balanced toward positives ------------------------------------------------


def test_positive_task_draws_favour_each_volumes_positive_findings():
    from hyperct.training.trainer import epoch_plan

    rng = np.random.default_rng(1)
    n = 400
    available = rng.random((n, 25)) < 0.9
    positive = available & (rng.random((n, 25)) < 0.1)  # ~2 positives of ~22 tasks per volume
    order, tasks = epoch_plan(7, 0, available)
    o0, t0 = epoch_plan(7, 0, available, positive=positive, positive_draw=0.0)
    assert np.array_equal(order, o0) and np.array_equal(tasks, t0)  # off: the paper's plan, unchanged
    o5, t5 = epoch_plan(7, 0, available, positive=positive, positive_draw=0.5)
    assert np.array_equal(order, o5)  # the same volume order
    assert all(available[i, t] for i, t in zip(o5, t5))
    has_pos = positive[o5].any(axis=1)
    uniform_rate = positive[order, tasks][has_pos].mean()
    balanced_rate = positive[o5, t5][has_pos].mean()
    assert uniform_rate < 0.2 and balanced_rate >= 0.5
    o6, t6 = epoch_plan(7, 0, available, positive=positive, positive_draw=0.5)
    assert np.array_equal(t5, t6)  # deterministic from (seed, epoch)


def test_positive_task_draw_is_a_config_option_off_by_default():
    from hyperct.errors import ConfigError
    from hyperct.training.config import default_config, load_config

    assert default_config()["train"]["task_draw"] == "uniform"
    cfg = load_config(None, ["train.task_draw=positive", "train.positive_draw=0.7"])
    assert cfg["train"]["task_draw"] == "positive" and cfg["train"]["positive_draw"] == 0.7
    with pytest.raises(ConfigError, match="train.task_draw"):
        load_config(None, ["train.task_draw=weighted"])


@pytest.mark.parametrize("draw", ["uniform", "positive"])
def test_trainer_hands_the_task_draw_to_the_epoch_plan(tmp_path, synthetic, monkeypatch, draw):
    import hyperct.training.trainer as T
    from tests.support.training import tiny_config

    seen = []
    plan = T.epoch_plan

    def spy(seed, epoch, available, positive=None, positive_draw=0.0):
        seen.append((None if positive is None else positive.copy(), positive_draw))
        return plan(seed, epoch, available, positive, positive_draw)

    monkeypatch.setattr(T, "epoch_plan", spy)
    cfg = tiny_config(train={"epochs": 1, "task_draw": draw, "positive_draw": 0.7})
    T.train(cfg, tmp_path / "run", datasets=synthetic, echo=None)
    assert len(seen) == 1
    positive, p = seen[0]
    if draw == "uniform":
        assert positive is None and p == 0.0
    else:
        assert p == 0.7 and np.array_equal(positive, synthetic[0].labels == 1)


def test_pretrain_cli_takes_a_new_run_or_a_resume(tmp_path, capsys):
    from hyperct.cli.main import main

    assert main(["pretrain", "--resume", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert main(["pretrain", "--out", str(tmp_path / "x")]) == 2
    assert main(["pretrain", "--config", "configs/demo_backbone_v1.yaml"]) == 2
    assert "--resume DIR" in capsys.readouterr().err
    assert main(["pretrain", "--resume", str(tmp_path)]) == 2  # nothing to resume there
    assert "cannot resume" in capsys.readouterr().err


@pytest.mark.slow
def test_until_stops_a_run_after_that_epoch_and_a_resume_finishes_its_schedule(tmp_path, capsys):
    from hyperct.cli.main import main

    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(_tiny_run_config(tmp_path / "cache", "fresh").dump())
    out = tmp_path / "bb"
    # refused before anything is written: past the 2 planned epochs
    assert main(["pretrain", "--config", str(cfg_file), "--out", str(out), "--until", "3"]) == 2
    assert "past the 2 epochs" in capsys.readouterr().err and not out.exists()
    assert main(["pretrain", "--config", str(cfg_file), "--out", str(out), "--until", "1"]) == 0

    def epochs():
        return [json.loads(x)["epoch"] for x in (out / "log.jsonl").read_text().splitlines()]

    state = json.loads((out / "last" / "state.json").read_text())
    assert epochs() == [1] and state["epoch"] == 1 and state["epochs_planned"] == 2
    assert (out / "model.safetensors").is_file()  # the backbone as it is after epoch 1
    assert main(["pretrain", "--resume", str(out), "--until", "1"]) == 2  # nothing left before it
    assert "nothing to train" in capsys.readouterr().err and epochs() == [1]
    assert main(["pretrain", "--resume", str(out)]) == 0
    assert epochs() == [1, 2]
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert log[1]["step"] == 2 * log[0]["step"]  # the step count (lr schedule) goes on


def test_set_overrides_existing_fields_and_is_checked(tmp_path):
    from hyperct.errors import ConfigError

    path = "configs/demo_backbone_v1.yaml"
    sets = ["data.prepare_workers=12", "device=cuda", "data.train.count=50", "optim.lr=2e-4"]
    cfg = PretrainConfig.load(path, sets=sets)
    assert cfg.data.prepare_workers == 12 and cfg.device == "cuda"
    assert cfg.data.train["count"] == 50 and cfg.data.train["pair"] == "drop_one"  # the rest kept
    assert cfg.optim.lr == 2e-4
    assert load_pretrain_config(path, sets=sets) == cfg.to_dict()
    with pytest.raises(ConfigError, match="optim.learning_rate: unknown field"):
        PretrainConfig.load(path, sets=["optim.learning_rate=1"])
    with pytest.raises(ConfigError, match="optim.loss"):
        PretrainConfig.load(path, sets=["optim.loss=l1"])
    with pytest.raises(ConfigError, match="expected FIELD=VALUE"):
        PretrainConfig.load(path, sets=["optim.lr"])
    # checked once, after every override: a --set can repair what the file alone gets wrong
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {train: {type: phantom, count: 2}}\noptim: {volume_loss_weight: 1.0}\n")
    with pytest.raises(ConfigError, match="images_per_phantom to 55") as err:
        PretrainConfig.load(bad)
    assert str(bad) in str(err.value)
    assert PretrainConfig.load(bad, sets=["optim.images_per_phantom=55"]).optim.images_per_phantom == 55


def test_drop_one_pairs_differ_in_one_finding_only_inside_its_mask():
    from hyperct.phantom import generate
    from hyperct.training.datasets import drawn_severities, dropped_finding

    for seed in (100000, 100001, 4242):  # the dataset's draw is the generator's own random draw
        assert drawn_severities(seed) == generate(seed, None, matrix=32).spec["severities"]
    ds = PhantomDataset(2, 100000, matrix=48, n_slices=24, pair="drop_one")
    for j in (0, 2):
        drawn, twin = ds.generate(j), ds.generate(j + 1)
        k = dropped_finding(ds.seeds[j], drawn_severities(ds.seeds[j]))
        assert k is not None and k != "cardiomegaly"
        changed = drawn.volume.hu != twin.volume.hu
        assert changed.any() and not (changed & ~np.asarray(drawn.masks[k], bool)).any()
        differ = np.flatnonzero(ds.labels[j] != ds.labels[j + 1])
        assert differ.tolist() == [catalogue().index(k)] and ds.labels[j, catalogue().index(k)] == 1
        assert sorted(drawn.masks) == sorted(set(twin.masks) | {k})


def test_bags_can_be_made_to_include_a_finding():
    pos = _image_pos(nodule_images=(10,), effusion_images=range(30, 50))
    rng = np.random.default_rng(4)
    bags = [sample_bag(pos, rng, size_min=8, size_max=8, include=NODULE) for _ in range(50)]
    assert all(10 in b for b in bags)
    assert all(pos[b].any(axis=1).mean() >= 0.5 for b in bags)


# --- pair contrast (drop_one twins) ---------------------------------------------------------------


def test_pair_contrast_rewards_scoring_the_lesion_above_the_twin_only_where_it_is():
    from hyperct.training.pretrain import pair_contrast_loss, pair_losses

    k = NODULE
    a = torch.zeros(2, 3, 25)
    b = torch.zeros(2, 3, 25)
    where = torch.tensor([[True, False, False], [False, False, False]])
    # equal logits: log 2 at the one selected token
    assert float(pair_contrast_loss(a, b, k, where)) == pytest.approx(np.log(2), abs=1e-6)
    # the phantom scores the nodule token above its twin: the loss falls; below: it rises
    a[0, 0, k] = 3.0
    low = float(pair_contrast_loss(a, b, k, where))
    a[0, 0, k] = -3.0
    high = float(pair_contrast_loss(a, b, k, where))
    assert low < np.log(2) < high
    # tokens outside ``where`` and other findings do not count
    a[0, 0, k] = 0.0
    a[1, 2, k] = -50.0
    a[0, 0, EFFUSION] = -50.0
    assert float(pair_contrast_loss(a, b, k, where)) == pytest.approx(np.log(2), abs=1e-6)
    # nothing selected: 0, with a gradient path
    none = pair_contrast_loss(a.requires_grad_(), b, k, torch.zeros(2, 3, dtype=torch.bool))
    assert float(none.detach()) == 0.0 and none.requires_grad

    # a step of two pairs: the first lacks the nodule in its twin, the second lacks nothing
    sizes = [2, 2, 3, 3]
    tokens = torch.zeros(10, 81, 25)
    tokens[1, 40, k] = 1  # image 1 of phantom 0 holds the nodule at token 40
    tok = torch.zeros(10, 81, 25, requires_grad=True)
    img = torch.zeros(10, 25, requires_grad=True)
    bag = torch.zeros(4, 25, requires_grad=True)
    loss = pair_losses(tok, img, bag, tokens, sizes, [k, None])
    assert float(loss) == pytest.approx(3 * np.log(2), abs=1e-5)  # token + image + bag terms
    loss.backward()
    g_tok, g_img, g_bag = tok.grad, img.grad, bag.grad
    assert g_tok[1, 40, k] < 0 and g_tok[3, 40, k] > 0  # raise the lesion token, lower the twin's
    assert int((g_tok != 0).sum()) == 2  # nowhere else
    assert g_img[1, k] < 0 and g_img[3, k] > 0 and int((g_img != 0).sum()) == 2
    assert g_bag[0, k] < 0 and g_bag[1, k] > 0 and int((g_bag != 0).sum()) == 2  # pair 2: no term
    assert float(pair_losses(tok, img, bag, tokens, sizes, [None, None])) == 0.0


def test_pair_contrast_needs_drop_one_twins():
    from hyperct.errors import ConfigError

    for pair in ("normal", None):
        train = {"type": "phantom", "count": 2, "pair": pair}
        with pytest.raises(ConfigError, match="pair_loss_weight.*drop_one"):
            load_pretrain_config(
                None, {"data": {"train": train}, "optim": {"bag_loss_weight": 1.0, "pair_loss_weight": 1.0}}
            )
    cfg = PretrainConfig.load(
        None,
        {
            "data": {"train": {"type": "phantom", "count": 2, "pair": "drop_one"}},
            "optim": {"bag_loss_weight": 1.0, "pair_loss_weight": 0.5},
        },
    )
    assert cfg.optim.pair_loss_weight == 0.5


@pytest.mark.slow
def test_drop_one_pretraining_with_the_pair_contrast_logs_it(tmp_path):
    cfg = v1_pretrain_config(tmp_path, pair="drop_one", count=4, epochs=1, pair_loss_weight=1.0)
    out = tmp_path / "bb"
    pretrain_backbone(cfg, out)
    (entry,) = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert entry["pair_loss"] > 0  # some pair lacked a finding, and the term was part of the loss


def test_split_negatives_weigh_another_lesions_tokens_as_much_as_all_other_negatives():
    """Finding 0 (a nodule, say) has one positive token, one token of another lesion (finding 1) and
    98 plain negatives. Plain balancing drowns the other lesion's token among the 98; split, it
    weighs half of the negatives' half, so scoring it high costs far more."""
    labels = torch.zeros(100, 2)
    labels[0, 0] = 1
    labels[1, 1] = 1
    logits = torch.full((100, 2), -3.0)
    logits[0, 0] = 3.0
    lookalike = logits.clone()
    lookalike[1, 0] = 3.0  # finding 0 fires on finding 1's lesion

    def cost(split: bool) -> float:
        return float(finding_loss(lookalike, labels, mode="balanced", split_negatives=split)) - float(
            finding_loss(logits, labels, mode="balanced", split_negatives=split)
        )

    assert cost(True) > 20 * cost(False) > 0
    # a batch without any other lesion: split or not, the same loss
    alone = labels.clone()
    alone[1, 1] = 0
    assert float(finding_loss(logits, alone, mode="balanced", split_negatives=True)) == pytest.approx(
        float(finding_loss(logits, alone, mode="balanced"))
    )


def test_split_negatives_need_the_balanced_or_focal_loss(tmp_path):
    from hyperct.errors import ConfigError

    with pytest.raises(ConfigError, match="split_negatives.*balanced or focal"):
        v1_pretrain_config(tmp_path, loss="bce", split_negatives=True)
    assert v1_pretrain_config(tmp_path, loss="focal", split_negatives=True).optim.split_negatives


def test_token_max_loss_pushes_down_only_the_top_token_of_an_image_without_the_finding():
    """One finding, two images of four tokens: the first has it (token 2), the second has none but
    one lesion-like token (3). Only each image's top token gets a gradient, the look-alike is pushed
    down, and lowering it lowers the loss while the other normal tokens do not count."""
    labels = torch.zeros(2, 4, 1)
    labels[0, 2] = 1
    logits = torch.tensor([[-3.0, -2.0, 1.0, -4.0], [-5.0, -4.0, -3.0, 2.0]])[..., None].requires_grad_()
    loss = token_max_loss(logits, labels, mode="balanced")
    loss.backward()
    grad = logits.grad[..., 0]
    assert grad[0, 2] < 0 and grad[1, 3] > 0  # lesion token up, look-alike down
    assert torch.count_nonzero(grad) == 2
    with torch.no_grad():
        lower = logits.detach().clone()
        lower[1, 3] = -6.0  # the look-alike now below the image's other normal tokens
        others = logits.detach().clone()
        others[1, :3] = 1.5  # the other normal tokens rise, still below the look-alike
        assert token_max_loss(lower, labels) < loss
        assert token_max_loss(others, labels) == pytest.approx(float(loss))
    # the image with the finding: its best token counts, not the mean of its tokens
    high = torch.tensor([[-9.0, -9.0, 4.0, -9.0], [-5.0, -5.0, -5.0, -5.0]])[..., None]
    assert token_max_loss(high, labels) < 0.05


@pytest.mark.slow
def test_pretraining_with_the_token_max_objective_logs_it_and_the_volume_token_max_auc(tmp_path):
    cfg = v1_pretrain_config(tmp_path, count=4, epochs=1, token_max_loss_weight=1.0)
    out = tmp_path / "bb"
    pretrain_backbone(cfg, out)
    (entry,) = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert entry["token_max_loss"] > 0
    assert entry["loss"] > entry["token_loss"] + entry["image_loss"] + entry["bag_loss"]
    vmax = entry["valid"]["volume_token_max_auc"]
    assert set(vmax) <= {"pleural_effusion", "lung_nodule"} and vmax  # scored where both labels occur
    assert all(0.0 <= v <= 1.0 for v in vmax.values())


def test_a_resume_with_new_settings_keeps_them_for_the_next_resume_and_the_old_ones_beside(tmp_path):
    from hyperct.training.pretrain import _record_resumed_config

    before = v1_pretrain_config(tmp_path, pair="drop_one")
    (tmp_path / "pretrain_config.yaml").write_text(before.dump(), encoding="utf-8")
    same = resume_config(tmp_path)
    _record_resumed_config(tmp_path, same, 5)
    assert not list(tmp_path.glob("pretrain_config.before-*"))  # nothing changed: nothing kept

    changed = resume_config(tmp_path, epochs=9, sets=["optim.pair_loss_weight=0.5"])
    _record_resumed_config(tmp_path, changed, 5)
    assert resume_config(tmp_path).optim.pair_loss_weight == 0.5  # the next resume goes on with it
    assert resume_config(tmp_path).optim.epochs == 9
    kept = (tmp_path / "pretrain_config.before-epoch-5.yaml").read_text(encoding="utf-8")
    assert kept == before.dump()


@pytest.mark.slow
def test_a_killed_background_generator_does_not_hang_the_next_block(tmp_path):
    """A worker generating the next block dies (killed, out of memory): the block is finished in
    the training process instead of waiting for it forever."""
    from hyperct.training.pretrain import _Blocks

    cfg = v1_pretrain_config(tmp_path, count=3)
    cfg.data.prepare_workers = 1
    blocks = _Blocks(cfg.data, PreprocessCache(tmp_path / "cache", compress=True), None)
    try:
        blocks.prefetch(1)
        for proc in list(blocks.pool._processes.values()):
            proc.kill()
        ds = blocks.get(1)  # returns (a hang here is the bug)
        assert ds.seeds[0] == 60003 and len(ds) == 6
        assert all(ds.cache.contains(ds._key(i)) for i in range(len(ds)))
        assert all(len(ds.labels[i]) == 25 for i in range(len(ds)))
        assert blocks.pool is None  # the broken pool is gone; the next prefetch starts a new one
    finally:
        blocks.close()


def test_stage1_runs_reports_what_a_resume_changed_and_the_validation_per_epoch(tmp_path):
    from tests.support.benchmarks import load_benchmark

    mod = load_benchmark("stage1_runs")

    run = tmp_path / "run"
    run.mkdir()
    before = v1_pretrain_config(tmp_path, pair="drop_one")
    after = PretrainConfig.load(None, before.to_dict(), ["optim.pair_loss_weight=1.0", "optim.bag_min=10"])
    (run / "pretrain_config.before-epoch-3.yaml").write_text(before.dump(), encoding="utf-8")
    (run / "pretrain_config.yaml").write_text(after.dump(), encoding="utf-8")
    rows = [
        {
            "epoch": e,
            "block": 0,
            "loss": 1.0 / e,
            "valid": {"mean_bag_auc": 0.6 + e / 100, "bag_auc": {"x": 0.5}},
        }
        for e in (1, 2, 3)
    ]
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = mod.summarise(run, from_epoch=2)
    assert out["settings_changed"] == [
        {"from_epoch": 3, "changed": {"optim.bag_min": [4, 10], "optim.pair_loss_weight": [0.0, 1.0]}}
    ]
    assert [e["epoch"] for e in out["epochs"]] == [2, 3]
    assert out["epochs"][1]["mean_bag_auc"] == pytest.approx(0.63) and out["epochs"][1]["loss"] == 1 / 3
    assert out["last_epoch_per_finding"] == {"bag_auc": {"x": 0.5}}


def test_balanced_loss_ignores_unknown_labels():
    """``known`` masks labels out of the balanced loss (the attention probe's phantoms have -1 labels)."""
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0], [-1.0, 0.0]])
    y = torch.tensor([[1.0, -1.0], [0.0, -1.0], [1.0, -1.0]])

    def loss(lg):
        return finding_loss(lg, y.clamp(min=0), mode="balanced", known=y >= 0)

    changed = logits.clone()
    changed[:, 1] = torch.tensor([-9.0, 9.0, 4.0])  # the unknown column: must not matter
    assert torch.isclose(loss(logits), loss(changed))
    worse = logits.clone()
    worse[1, 0] = 5.0  # the negative scored high: the loss must rise
    assert loss(worse) > loss(logits)


@pytest.mark.slow
def test_a_resume_can_give_the_patch_embedding_a_higher_learning_rate(tmp_path):
    """``optim.embedding_lr_factor`` (an HU window added late grows at an early lr): the same epoch
    resumed from the same state moves the patch embedding ~10x as far at factor 10 and the rest of
    the backbone about as far; a later resume at factor 1 regroups the AdamW moments by name."""
    import shutil

    from safetensors.torch import load_file

    start = tmp_path / "start" / "bb"
    pretrain_backbone(_tiny_run_config(tmp_path / "start" / "cache", "plain"), start, stop_after=1)
    before = load_file(start / "model.safetensors")
    moved = {}
    for factor in (1, 10):
        out = tmp_path / f"x{factor}" / "bb"
        shutil.copytree(start.parent, out.parent)
        again = resume_config(out, epochs=2, sets=[f"optim.embedding_lr_factor={factor}"])
        pretrain_backbone(again, out, resume=True)
        after = load_file(out / "model.safetensors")
        moved[factor] = {
            part: sum(
                float((after[k] - before[k]).norm())
                for k in before
                if k.startswith(prefix) and before[k].is_floating_point()
            )
            for part, prefix in (("embedding", "embeddings.patch_embeddings."), ("layers", "layer."))
        }
    assert 6 < moved[10]["embedding"] / moved[1]["embedding"] < 14
    assert 0.5 < moved[10]["layers"] / moved[1]["layers"] < 2
    state = json.loads((tmp_path / "x10" / "bb" / "last" / "state.json").read_text())
    assert [g["lr_factor"] for g in state["param_groups"]] == [1.0, 1.0, 10.0, 10.0]
    assert any(n.startswith("backbone.embeddings.patch") for n in state["param_names"][2])
    back = resume_config(tmp_path / "x10" / "bb", epochs=3, sets=["optim.embedding_lr_factor=1"])
    pretrain_backbone(back, tmp_path / "x10" / "bb", resume=True)
    state = json.loads((tmp_path / "x10" / "bb" / "last" / "state.json").read_text())
    assert len(state["param_groups"]) == 2 and state["epoch"] == 3
