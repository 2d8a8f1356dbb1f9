"""The CPU time estimate printed before a long CPU run (so nobody thinks it hung)."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch

from hyperct.inference import estimated_cpu_seconds, scan_gflop
from hyperct.loading import load_model
from hyperct.network import HyperCT, HyperCTConfig


def test_vitb_costs_what_the_design_says_per_image():
    model = HyperCT(HyperCTConfig(backbone="vitb16"))
    per_image = scan_gflop(model, 1, n_images=1)
    assert 14.0 <= per_image <= 16.0  # DESIGN.md section 4: about 15 GFLOP per image at 86 tokens
    assert scan_gflop(model, 25) == pytest.approx(25 * 55 * per_image)


def test_the_estimate_grows_with_the_tasks_and_is_none_off_the_cpu(monkeypatch):
    loaded = load_model(None, device="cpu")
    one, all25 = estimated_cpu_seconds(loaded, 1), estimated_cpu_seconds(loaded, 25)
    assert 0 < one < all25
    monkeypatch.setattr(loaded, "device", torch.device("meta"))
    assert estimated_cpu_seconds(loaded) is None


def test_predict_says_how_long_a_slow_cpu_run_will_take(monkeypatch, tmp_path):
    from hyperct import inference
    from hyperct.cli.main import main

    monkeypatch.setattr(inference, "estimated_cpu_seconds", lambda loaded, n=25: 600.0)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        main(["predict", str(tmp_path / "missing.nii.gz"), "--device", "cpu", "-q"])
    assert "about 10 min per scan" in err.getvalue() and "--device cuda" in err.getvalue()
