"""benchmarks/call_burden.py: calls and false calls per scan at a manifest's thresholds, on a report
whose answer is worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.support.benchmarks import load_benchmark
from tests.training.test_score_crosstalk import _report


def test_calls_false_calls_and_rates_at_the_manifests_thresholds(tmp_path):
    mod = load_benchmark("call_burden")
    # 3 scans x 2 findings; f0's threshold 0.5, f1's 0.9
    labels = np.array([[1, 0], [0, 0], [-1, 1]])
    probs = np.array([[0.6, 0.95], [0.4, 0.2], [0.7, 0.5]])
    _report(tmp_path / "rep", labels, probs)
    (tmp_path / "manifest.json").write_text(json.dumps({"thresholds": {"f0": 0.5, "f1": 0.9}}))
    out = tmp_path / "r.json"
    mod.main([str(tmp_path / "rep"), "--manifest", str(tmp_path / "manifest.json"), "--out", str(out)])
    r = json.loads(out.read_text())
    # calls: scan 0 both, scan 1 none, scan 2 f0 (not labelled, still a call a user sees)
    assert r["calls_per_scan"] == pytest.approx(1.0) and r["false_calls_per_scan"] == pytest.approx(0.33)
    assert r["false_calls_per_scan_by_finding"] == {"f1": pytest.approx(0.333)}
    assert r["sensitivity"] == 0.5  # of (0, f0) and (2, f1), one called
    assert r["false_positive_rate"] == pytest.approx(0.333)  # of 3 labelled negatives, one called
    bands = r["by_findings_present"]
    assert bands["0"] == {"scans": 1, "calls_per_scan": 0.0, "false_calls_per_scan": 0.0}
    assert bands["1-2"]["scans"] == 2 and bands["1-2"]["calls_per_scan"] == 1.5
    assert bands["3-4"] == {"scans": 0, "calls_per_scan": None, "false_calls_per_scan": None}


def test_a_manifest_without_a_findings_threshold_is_refused(tmp_path):
    mod = load_benchmark("call_burden")
    _report(tmp_path / "rep", np.array([[1, 0]]), np.array([[0.6, 0.1]]))
    (tmp_path / "m.json").write_text(json.dumps({"thresholds": {"f0": 0.5}}))
    with pytest.raises(SystemExit, match="no threshold for f1"):
        mod.main([str(tmp_path / "rep"), "--manifest", str(tmp_path / "m.json")])
