"""Adding an HU window to a windowed backbone, and to a stage-1 run between two epochs (issue 18: the
narrow blood / myocardium window): the backbone computes exactly what it did, and the run resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hyperct.errors import CheckpointError
from hyperct.network.backbone import build_backbone, load_backbone
from hyperct.network.windows import DEMO_WINDOWS, add_windows, extend_windows, widen_window_tensors
from hyperct.training.pretrain import pretrain_backbone, resume_config
from hyperct.training.run_windows import add_windows_to_run
from tests.support.models import TINY_BACKBONE
from tests.support.training import windowed_run

BLOOD_POOL = [[-15.0, 105.0]]


def windowed_backbone():
    torch.manual_seed(0)
    bb = add_windows(build_backbone(dict(TINY_BACKBONE)), DEMO_WINDOWS)
    with torch.no_grad():  # trained-looking embedding: every window's weights non-zero
        emb = bb.embeddings.patch_embeddings
        emb.weight.normal_(0, 0.02)
        emb.pooled.weight.normal_(0, 0.5)
    return bb.eval()


def test_widening_keeps_each_windows_maxima_and_means_apart():
    weight = torch.arange(2 * 12 * 1 * 1, dtype=torch.float32).view(2, 12, 1, 1)
    pooled = torch.arange(2 * 18, dtype=torch.float32).view(2, 18)
    w, q = widen_window_tensors(weight, pooled, 3, 4)
    assert w.shape == (2, 15, 1, 1) and q.shape == (2, 24)
    assert torch.equal(w[:, :12], weight) and (w[:, 12:] == 0).all()
    assert torch.equal(q[:, :9], pooled[:, :9]) and (q[:, 9:12] == 0).all()  # maxima, then the new one's
    assert torch.equal(q[:, 12:21], pooled[:, 9:]) and (q[:, 21:] == 0).all()  # means, then the new one's
    with pytest.raises(ValueError):
        widen_window_tensors(weight, pooled, 3, 2)


def test_an_extended_backbone_computes_what_it_did_and_sees_the_new_window():
    bb = windowed_backbone()
    wide = extend_windows(bb, BLOOD_POOL).eval()
    assert wide.config.hu_windows[-1] == BLOOD_POOL[0] and len(wide.config.hu_windows) == 4
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        np.testing.assert_allclose(
            wide(pixel_values=x).last_hidden_state, bb(pixel_values=x).last_hidden_state, atol=1e-5
        )
        wide.embeddings.patch_embeddings.weight[:, 12:] = 0.1  # the new window's kernels now count
        assert not torch.allclose(
            wide(pixel_values=x).last_hidden_state, bb(pixel_values=x).last_hidden_state
        )
    with pytest.raises(ValueError, match="no HU windows"):
        extend_windows(build_backbone(dict(TINY_BACKBONE)), BLOOD_POOL)


@pytest.mark.slow
def test_a_run_given_a_window_between_epochs_resumes_computing_what_it_did(tmp_path):
    out = windowed_run(tmp_path)
    before = load_backbone(out).eval()
    assert len(before.config.hu_windows) == 3
    got = add_windows_to_run(out, BLOOD_POOL)
    assert got[-1] == BLOOD_POOL[0]
    after = load_backbone(out).eval()
    x = torch.randn(1, 3, 144, 144)
    with torch.no_grad():
        np.testing.assert_allclose(
            after(pixel_values=x).last_hidden_state, before(pixel_values=x).last_hidden_state, atol=1e-5
        )
    with pytest.raises(CheckpointError, match="already"):
        add_windows_to_run(out, BLOOD_POOL)
    pretrain_backbone(resume_config(out, epochs=2), out, resume=True)
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["epoch"] == 2 and np.isfinite(log[-1]["loss"])
    assert json.loads((out / "config.json").read_text())["hu_windows"][-1] == BLOOD_POOL[0]


def test_a_folder_without_resume_state_or_windows_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="resume state"):
        add_windows_to_run(tmp_path, BLOOD_POOL)


def test_the_command_adds_a_window_only_to_a_run_it_resumes(tmp_path):
    from tests.support.cli import run_cli

    code, _, err = run_cli(
        ["pretrain", "--config", "x.yaml", "--out", str(tmp_path / "o"), "--add-hu-window", "-15", "105"]
    )
    assert code == 2 and "--add-hu-window goes with --resume" in err
    code, _, err = run_cli(["pretrain", "--resume", str(tmp_path), "--add-hu-window", "-15", "105"])
    assert code == 2 and "cannot resume" in err
    code, _, err = run_cli(["pretrain", "--resume", str(tmp_path), "--add-hu-window", "105", "-15"])
    assert code == 2 and "lo < hi" in err
