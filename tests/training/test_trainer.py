"""The trainer: epoch plan, schedules, run folder, manifest, resume (bitwise), refusal to overwrite."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from hyperct.checkpoint import load_checkpoint, read_manifest
from hyperct.errors import ConfigError, DatasetError
from hyperct.training.trainer import epoch_plan, lr_factor, rank_batches, train
from tests.support.training import (
    CM,
    PE,
    SignalDataset,
    StopTraining,
    assert_same_last_weights,
    stop_after,
    tiny_config,
)


def test_epoch_plan_draws_only_available_tasks_deterministically():
    rng = np.random.default_rng(0)
    avail = rng.random((50, 25)) < 0.2
    avail[7] = False  # no label at all: left out
    order, tasks = epoch_plan(11, 2, avail)
    assert 7 not in order and sorted(order.tolist()) == [i for i in range(50) if avail[i].any()]
    assert all(avail[i, t] for i, t in zip(order, tasks))
    o2, t2 = epoch_plan(11, 2, avail)
    assert np.array_equal(order, o2) and np.array_equal(tasks, t2)
    o3, _ = epoch_plan(11, 3, avail)
    assert not np.array_equal(order, o3)
    # every available task gets drawn over many epochs (uniform among a volume's tasks)
    seen = {(i, t) for e in range(200) for i, t in zip(*epoch_plan(1, e, avail[:5]))}
    assert seen == {(i, t) for i in range(5) for t in np.flatnonzero(avail[i])}


def test_rank_batches_split_each_global_batch():
    single = rank_batches(10, 4, 0, 1)
    parts = [rank_batches(10, 4, r, 3) for r in range(3)]
    for b, (positions, n) in enumerate(single):
        merged = sorted(p for r in range(3) for p in parts[r][b][0] if p >= 0)
        assert merged == positions and all(parts[r][b][1] == n for r in range(3))
    # last batch has 2 samples for 3 ranks: rank 2 gets a zero-weight padding item
    assert parts[2][-1][0] == [-1 - 8]


def test_step_schedule_matches_torch_steplr():
    sched = {"name": "step", "step_size": 15, "gamma": 0.1, "warmup_epochs": 0}
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-5)
    ref = torch.optim.lr_scheduler.StepLR(opt, step_size=15, gamma=0.1)
    for epoch in range(20):
        assert 1e-5 * lr_factor(sched, epoch, 3, 10, 20) == pytest.approx(ref.get_last_lr()[0], rel=1e-12)
        opt.step()
        ref.step()


def test_cosine_schedule_with_warmup():
    sched = {"name": "cosine", "warmup_epochs": 1.0, "warmup_start": 0.1, "min_factor": 0.01}
    f = [lr_factor(sched, e, s, 4, 5) for e in range(5) for s in range(4)]
    assert f[0] == pytest.approx(0.1) and f[2] == pytest.approx(0.55)  # linear warm-up
    assert f[4] == pytest.approx(1.0)  # peak after warm-up
    assert all(a >= b for a, b in zip(f[4:], f[5:]))  # then decreasing
    assert lr_factor(sched, 5, 0, 4, 5) == pytest.approx(0.01)


def test_training_run_writes_checkpoint_log_config_and_refuses_overwrite(tmp_path, synthetic):
    cfg = tiny_config(optim={"lr": 1e-3})
    run = tmp_path / "run"
    result = train(cfg, run, datasets=synthetic, echo=None)
    assert result.epochs_done == 2 and result.best_epoch in (1, 2)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2]
    for e in log:
        assert {"train_loss", "val_auc", "val_mean_auc", "lr", "seconds"} <= set(e)
        assert set(e["val_auc"]) == {"pleural_effusion", "cardiomegaly"}
        assert e["val_mean_auc"] == pytest.approx(np.mean(list(e["val_auc"].values())))
        assert e["samples"] == 12
    assert yaml.safe_load((run / "config.yaml").read_text()) == cfg
    best = [e for e in log if e["best"]][-1]
    man = read_manifest(run / "best").raw
    assert man["training"]["optimizer"]["lr"] == 1e-3 and man["training"]["epochs"] == 2
    assert man["training"]["best_epoch"] == best["epoch"] == result.best_epoch
    assert man["metrics"]["validation"]["mean_auc"] == pytest.approx(best["val_mean_auc"])
    assert man["backbone"]["trained"] is True and man["backbone"]["weights"] == "included"
    assert man["training"]["data"]["train"]["n"] == 12
    assert man["training"]["data"]["valid"]["labels"]["pleural_effusion"]["positives"] == int(
        (synthetic[1].labels[:, PE] == 1).sum()
    )
    model, _ = load_checkpoint(run / "best")  # loads (sha256 verified)
    assert model.config.rank == 4
    with pytest.raises(ConfigError, match="already exists"):
        train(cfg, run, datasets=synthetic, echo=None)
    (run / "notes.txt").write_text("mine")
    train(tiny_config(train={"epochs": 1}), run, datasets=synthetic, overwrite=True, echo=None)
    assert len((run / "log.jsonl").read_text().splitlines()) == 1
    assert (run / "notes.txt").read_text() == "mine"  # only the run's own files are replaced


def test_resume_after_interruption_gives_bitwise_identical_weights(tmp_path, monkeypatch):
    data = (SignalDataset(10, 4, missing=0.3), SignalDataset(8, 5))
    cfg = tiny_config(
        optim={"lr": 2e-3, "weight_decay": 0.01},
        schedule={"name": "cosine", "warmup_epochs": 0.5},
        train={"epochs": 2, "batch_size": 4, "micro_batch": 2},
    )
    train(cfg, tmp_path / "full", datasets=data, echo=None)
    with pytest.raises(StopTraining):
        train(cfg, tmp_path / "cut", datasets=data, echo=None, on_epoch_end=stop_after(1))
    assert len((tmp_path / "cut" / "log.jsonl").read_text().splitlines()) == 1
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("resume must not unpickle"))
    train(cfg, tmp_path / "cut", datasets=data, resume=True, echo=None)

    from safetensors.torch import load_file

    full = assert_same_last_weights(tmp_path / "full", tmp_path / "cut")
    assert any(k.startswith("backbone.") for k in full)
    opt_full = load_file(tmp_path / "full" / "last" / "optimizer.safetensors")
    opt_cut = load_file(tmp_path / "cut" / "last" / "optimizer.safetensors")
    assert all(torch.equal(opt_full[k], opt_cut[k]) for k in opt_full)
    log_full = (tmp_path / "full" / "log.jsonl").read_text().splitlines()
    log_cut = (tmp_path / "cut" / "log.jsonl").read_text().splitlines()

    def strip(line):
        return {k: v for k, v in json.loads(line).items() if "seconds" not in k and k != "samples_per_s"}

    assert [strip(x) for x in log_full] == [strip(x) for x in log_cut]


def test_resume_needs_a_saved_state(tmp_path, synthetic):
    with pytest.raises(ConfigError, match="cannot resume"):
        train(tiny_config(), tmp_path / "nothing", datasets=synthetic, resume=True, echo=None)


def test_frozen_backbone_is_not_trained_and_task_subset_is_respected(tmp_path, synthetic):
    cfg = tiny_config(
        model={"train_backbone": False}, data={"tasks": ["pleural_effusion"]}, train={"epochs": 1}
    )
    train(cfg, tmp_path / "run", datasets=synthetic, echo=None)
    man = read_manifest(tmp_path / "run" / "best").raw
    assert man["backbone"]["trained"] is False
    assert set(man["metrics"]["validation"]["auc"]) == {"pleural_effusion"}
    from safetensors.torch import load_file

    assert not any(
        k.startswith("backbone.") for k in load_file(tmp_path / "run" / "last" / "model.safetensors")
    )


def test_validation_without_both_classes_is_an_error(tmp_path):
    valid = SignalDataset(6, 1)
    valid.labels[:, PE] = 0
    valid.labels[:, CM] = 1
    with pytest.raises(DatasetError, match="both positive and negative"):
        train(tiny_config(), tmp_path / "r", datasets=(SignalDataset(6, 0), valid), echo=None)


def test_no_validation_keeps_the_last_epoch(tmp_path):
    result = train(tiny_config(), tmp_path / "r", datasets=(SignalDataset(6, 0), None), echo=None)
    assert result.best_epoch == 2
    assert read_manifest(tmp_path / "r" / "best").raw["training"]["best_epoch"] == 2


def test_external_dinov3_weights_stay_external_and_reload(tmp_path, synthetic):
    from safetensors.torch import load_file

    from hyperct.checkpoint import sha256_file
    from hyperct.network.backbone import build_backbone, save_backbone
    from tests.support.models import TINY_BACKBONE

    folder = save_backbone(build_backbone(dict(TINY_BACKBONE), seed=42), tmp_path / "dinov3")
    cfg = tiny_config(model={"backbone_weights": str(folder), "train_backbone": False}, train={"epochs": 1})
    result = train(cfg, tmp_path / "run", datasets=synthetic, echo=None)
    man = read_manifest(tmp_path / "run" / "best").raw
    assert man["backbone"]["weights"] == "external" and man["backbone"]["trained"] is False
    assert man["backbone"]["sha256"] == sha256_file(folder / "model.safetensors")
    assert not any(
        k.startswith("backbone.") for k in load_file(tmp_path / "run" / "best" / "model.safetensors")
    )
    with pytest.raises(Exception, match="external backbone weights"):
        load_checkpoint(tmp_path / "run" / "best")
    model, _ = load_checkpoint(tmp_path / "run" / "best", backbone_dir=folder)
    pixels = torch.stack([synthetic[1].pixel_values(i) for i in range(3)])
    with torch.no_grad():
        torch.testing.assert_close(model(pixels), result.model.eval()(pixels))


def test_optimizer_state_split_by_name_and_joined_back_is_the_same_state():
    from hyperct.training.state import join_optimizer_state, split_optimizer_state

    params = [torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2, 2))]
    opt = torch.optim.AdamW(params, lr=1e-2)
    sum(p.square().sum() for p in params).backward()
    opt.step()
    state = opt.state_dict()["state"]
    tensors, scalars = split_optimizer_state(state, ["a", "b"])
    assert set(tensors) == {
        "a::exp_avg",
        "a::exp_avg_sq",
        "b::exp_avg",
        "b::exp_avg_sq",
        "a::step",
        "b::step",
    }
    joined = join_optimizer_state(tensors, scalars, ["a", "b"])
    assert joined.keys() == state.keys()
    for i in state:
        assert joined[i].keys() == state[i].keys()
        assert all(torch.equal(torch.as_tensor(joined[i][k]), torch.as_tensor(state[i][k])) for k in state[i])
    assert join_optimizer_state(tensors, scalars, ["a", "b", "c"]).keys() == {0, 1}  # c: no state saved
