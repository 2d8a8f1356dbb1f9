"""A conv stem added to a stage-1 run between two epochs (hyperct.training.run_stem): the run's backbone
computes exactly what it did, the resume trains the stem (at its own lr factor), and runs the stem
cannot take are refused before anything is written."""

from __future__ import annotations

import json

import pytest
import torch

from hyperct.errors import CheckpointError
from hyperct.network.backbone import load_backbone
from hyperct.training.pretrain import pretrain_backbone, resume_config
from hyperct.training.run_stem import add_conv_stem_to_run
from hyperct.training.run_windows import add_windows_to_run
from tests.support.models import TINY_BACKBONE, assert_same_hidden_states
from tests.support.training import windowed_run


@pytest.mark.slow
def test_a_run_given_a_conv_stem_between_epochs_computes_what_it_did_and_trains_it(tmp_path):
    out = windowed_run(tmp_path)
    before = load_backbone(out).eval()
    assert add_conv_stem_to_run(out, 8) == 8
    after = load_backbone(out).eval()
    assert after.config.conv_stem == 8
    x = torch.randn(1, 3, 144, 144)
    assert_same_hidden_states(after, before, x)
    with pytest.raises(CheckpointError, match="already"):
        add_conv_stem_to_run(out, 8)
    pretrain_backbone(resume_config(out, epochs=2, sets=["optim.stem_lr_factor=10"]), out, resume=True)
    trained = load_backbone(out).eval()
    proj = trained.embeddings.patch_embeddings.stem.proj.weight
    assert proj.abs().max() > 0  # the stem has started to count
    state = json.loads((out / "last" / "state.json").read_text())
    assert state["epoch"] == 2 and [g["lr_factor"] for g in state["param_groups"]] == [1.0, 1.0, 10.0, 10.0]
    assert all(".stem." in n for n in state["param_names"][2] + state["param_names"][3])
    # a window added after the stem has trained: the stem reads it too, its weights and AdamW moments
    # widened with zero columns, so the run computes what it did and goes on
    assert add_windows_to_run(out, [[850, 1000]])[-1] == [850.0, 1000.0]
    wider = load_backbone(out).eval()
    first = wider.embeddings.patch_embeddings.stem.blocks[0].weight
    assert first.shape[1] == 3 * (2 + len(after.config.hu_windows)) and first[:, -3:].abs().max() == 0
    assert_same_hidden_states(wider, trained, x)
    pretrain_backbone(resume_config(out, epochs=3), out, resume=True)
    grown = load_backbone(out).embeddings.patch_embeddings.stem.blocks[0].weight
    assert grown[:, -3:].abs().max() > 0  # training reaches the new window's columns


def test_runs_the_stem_cannot_take_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(CheckpointError, match="not a stage-1 run folder"):
        add_conv_stem_to_run(tmp_path, 8)
    (tmp_path / "last").mkdir()
    (tmp_path / "last" / "state.json").write_text("{}")
    plain = dict(TINY_BACKBONE)
    for cfg, match in (
        (plain, "no HU windows"),
        (dict(plain, hu_windows=[[-160, 240]], conv_stem=8), "already"),
        (dict(plain, hu_windows=[[-160, 240]], patch_size=8), "patch_size 16"),
    ):
        (tmp_path / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(CheckpointError, match=match):
            add_conv_stem_to_run(tmp_path, 8)
        assert json.loads((tmp_path / "config.json").read_text()) == cfg
    (tmp_path / "config.json").write_text(json.dumps(dict(plain, hu_windows=[[-160, 240]])))
    with pytest.raises(CheckpointError, match="4..128"):
        add_conv_stem_to_run(tmp_path, 1000)


def test_the_command_adds_a_stem_only_to_a_run_it_resumes(tmp_path):
    from tests.support.cli import run_cli

    code, _, err = run_cli(
        ["pretrain", "--config", "x.yaml", "--out", str(tmp_path / "o"), "--add-conv-stem", "16"]
    )
    assert code == 2 and "--add-conv-stem goes with --resume" in err
    code, _, err = run_cli(["pretrain", "--resume", str(tmp_path), "--add-conv-stem", "16"])
    assert code == 2 and "cannot resume" in err
    code, _, err = run_cli(["pretrain", "--resume", str(tmp_path), "--add-conv-stem", "2"])
    assert code == 2 and "--add-conv-stem: conv_stem must be a whole number of channels 4..128" in err


def test_a_damaged_config_json_is_refused_naming_it(tmp_path):
    (tmp_path / "last").mkdir()
    (tmp_path / "last" / "state.json").write_text("{}")
    for raw in (b"{not json", b"[1, 2]", b"\xff\xfe{"):
        (tmp_path / "config.json").write_bytes(raw)
        with pytest.raises(CheckpointError, match="config.json"):
            add_conv_stem_to_run(str(tmp_path), 8)
    plain = dict(TINY_BACKBONE, hu_windows=[[-160, 240]])
    for broken in (dict(plain, patch_size=None), {k: v for k, v in plain.items() if k != "hidden_size"}):
        (tmp_path / "config.json").write_text(json.dumps(broken))
        with pytest.raises(CheckpointError, match="config.json.*must be numbers"):
            add_conv_stem_to_run(tmp_path, 8)
