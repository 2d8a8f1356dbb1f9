"""benchmarks/gpu_check.py: the GPU-vs-CPU comparison reports no difference for the same model on the
same device, and reports the differences (probabilities, calls, maps) of a different one."""

from __future__ import annotations

import pytest
import torch

from hyperct.inference import analyze
from hyperct.loading import load_model
from tests.support.benchmarks import load_benchmark
from tests.support.models import save_tiny_checkpoint
from tests.support.phantoms import cached

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu-check")
    a = load_model(save_tiny_checkpoint(root / "a", seed=0), device="cpu")
    a2 = load_model(save_tiny_checkpoint(root / "a2", seed=0), device="cpu")
    b = load_model(save_tiny_checkpoint(root / "b", seed=1), device="cpu")
    vol = cached(4, (("pleural_effusion", 0.9),)).volume
    return load_benchmark("gpu_check"), a, a2, b, vol


def test_the_same_weights_give_no_difference(setup):
    gc, a, a2, _, vol = setup
    (row,) = gc.compare_scores(a, a2, CPU, [("scan", vol)])
    assert row["max_abs_dp"] == 0.0 and row["calls_differ"] == []
    assert row["device_reported"] == "cpu"


def test_different_weights_show_their_differences_and_flipped_calls(setup):
    gc, a, _, b, vol = setup
    (row,) = gc.compare_scores(a, b, CPU, [("scan", vol)])
    pa = {f.id: f for f in analyze(a, vol).findings}
    pb = {f.id: f for f in analyze(b, vol).findings}
    assert row["max_abs_dp"] == pytest.approx(max(abs(pa[k].probability - pb[k].probability) for k in pa))
    assert row["max_abs_dp"] > 0
    flipped = {k for k in pa if pa[k].call != pb[k].call}
    assert flipped and {d["finding"] for d in row["calls_differ"]} == flipped


def test_saliency_rows_compare_maps_and_keep_a_failing_method(setup, monkeypatch):
    gc, a, a2, b, vol = setup
    monkeypatch.setattr(gc, "METHODS", ("attention", "gradcam"))
    same = {r["method"]: r for r in gc.compare_saliency(a, a2, CPU, vol, "pleural_effusion")}
    assert (
        same["attention"]["pearson_r_vs_cpu"] == pytest.approx(1.0) and same["attention"]["same_peak_token"]
    )
    other = {r["method"]: r for r in gc.compare_saliency(a, b, CPU, vol, "pleural_effusion")}
    assert other["attention"]["pearson_r_vs_cpu"] < 0.999

    real = gc.compute_saliency

    def broken(model, pre, findings, *, method):
        if method == "gradcam":
            raise RuntimeError("no kernel for this device")
        return real(model, pre, findings, method=method)

    monkeypatch.setattr(gc, "compute_saliency", broken)
    rows = {r["method"]: r for r in gc.compare_saliency(a, a2, CPU, vol, "pleural_effusion")}
    assert rows["gradcam"]["error"] == "RuntimeError: no kernel for this device"
    assert "error" not in rows["attention"]
