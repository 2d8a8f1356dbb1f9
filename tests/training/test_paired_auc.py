"""benchmarks/paired_auc.py: the paired bootstrap of a macro-AUC difference on reports built by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.support.benchmarks import load_benchmark
from tests.training.test_score_crosstalk import _report


def _labels(rng, n=200, k=3):
    y = (rng.random((n, k)) < 0.4).astype(int)
    y[rng.random(y.shape) < 0.05] = -1  # not labelled: left out of that finding's AUC
    return y


def test_a_model_better_on_one_finding_is_found_better_and_a_copy_is_not(tmp_path):
    mod = load_benchmark("paired_auc")
    rng = np.random.default_rng(1)
    y = _labels(rng)
    old = np.clip(0.5 + 0.15 * (y == 1) + rng.normal(0, 0.2, y.shape), 0, 1)
    new = old.copy()
    new[:, 1] = np.where(y[:, 1] == 1, 0.9, 0.1)  # finding f1 now perfectly ranked
    _report(tmp_path / "old", y, old)
    _report(tmp_path / "new", y, new)
    _report(tmp_path / "copy", y, old)
    out = tmp_path / "r.json"
    mod.main([str(tmp_path / "old"), str(tmp_path / "new"), "--rounds", "300", "--out", str(out)])
    r = json.loads(out.read_text())
    assert (
        r["per_finding"]["f1"]["new"] == 1.0
        and r["per_finding"]["f0"]["new"] == r["per_finding"]["f0"]["old"]
    )
    gain = (1.0 - r["per_finding"]["f1"]["old"]) / 3
    assert r["difference"] == pytest.approx(gain, abs=1e-3)
    low, high = r["difference_ci95"]
    assert 0 < low < r["difference"] < high and r["share_new_above_old"] == 1.0
    for which in ("old", "new"):  # each model's own macro sits inside its interval, which is wider
        lo, hi = r[f"macro_auc_{which}_ci95"]
        assert lo < r[f"macro_auc_{which}"] < hi and hi - lo > high - low
    assert r["macro_auc_new_ci95"][0] > r["macro_auc_old_ci95"][0]

    same = mod.compare(tmp_path / "old", tmp_path / "copy", rounds=100)
    assert same["difference"] == 0 and same["difference_ci95"] == [0, 0] and same["share_new_above_old"] == 0
    assert same["macro_auc_new_ci95"] == same["macro_auc_old_ci95"]


def test_reports_of_different_volumes_are_refused(tmp_path):
    mod = load_benchmark("paired_auc")
    rng = np.random.default_rng(2)
    y = _labels(rng, n=20)
    _report(tmp_path / "a", y, rng.random(y.shape))
    y2 = y.copy()
    y2[0, 0] = 1 - y2[0, 0] if y2[0, 0] >= 0 else 1
    _report(tmp_path / "b", y2, rng.random(y.shape))
    with pytest.raises(SystemExit, match="not of the same volumes"):
        mod.compare(tmp_path / "a", tmp_path / "b", rounds=10)


def test_the_json_file_is_kept_when_stdout_is_closed(tmp_path, monkeypatch):
    """`paired_auc.py ... --out F | head` closes stdout early: the file is written before printing."""
    output = load_benchmark("_output")

    def closed_pipe(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("builtins.print", closed_pipe)
    with pytest.raises(BrokenPipeError):
        output.emit_json({"macro_auc_new": 0.9}, str(tmp_path / "sub" / "r.json"))
    assert json.loads((tmp_path / "sub" / "r.json").read_text()) == {"macro_auc_new": 0.9}
