"""benchmarks/score_crosstalk.py: scores driven by each finding's own label show no crosstalk; scores
driven by how many findings a volume has show it, both between findings and against the others."""

from __future__ import annotations

import csv

import numpy as np

from tests.support.benchmarks import load_benchmark


def _report(folder, labels: np.ndarray, probs: np.ndarray) -> None:
    folder.mkdir()
    ids = [f"f{k}" for k in range(labels.shape[1])]
    with open(folder / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["volume"] + [f"label_{i}" for i in ids] + [f"prob_{i}" for i in ids])
        for v, (lab, p) in enumerate(zip(labels, probs, strict=True)):
            w.writerow([f"v{v}", *[int(x) for x in lab], *[f"{x:.6f}" for x in p]])


def test_own_evidence_scores_show_no_crosstalk_and_an_abnormality_score_does(tmp_path):
    mod = load_benchmark("score_crosstalk")
    rng = np.random.default_rng(0)
    labels = (rng.random((400, 6)) < 0.3).astype(int)
    labels[rng.random(labels.shape) < 0.05] = -1  # missing labels are left out
    noise = rng.normal(0, 0.3, labels.shape)
    own = 1 / (1 + np.exp(-(2 * (labels == 1) - 1 + noise)))  # each finding from its own label
    count = (labels == 1).sum(axis=1, keepdims=True)
    shared = 1 / (1 + np.exp(-(count - 2 + noise)))  # every finding from the volume's count
    _report(tmp_path / "own", labels, own)
    _report(tmp_path / "shared", labels, shared)
    out = tmp_path / "r.json"
    mod.main([str(tmp_path / "own"), str(tmp_path / "shared"), "--out", str(out)])
    import json

    r = json.loads(out.read_text())["reports"]
    a, b = r[str(tmp_path / "own")], r[str(tmp_path / "shared")]
    assert a["volumes"] == 400 and a["findings"] == 6
    assert abs(a["label_rho_median"]) < 0.1 and a["label_rho_median"] == b["label_rho_median"]
    assert abs(a["score_rho_median"]) < 0.1 and b["score_rho_median"] > 0.5
    assert abs(a["rho_vs_other_findings"]["median"]) < 0.1
    assert b["rho_vs_other_findings"]["min"] > 0.5
    assert set(b["rho_vs_other_findings"]["per_finding"]) == {f"f{k}" for k in range(6)}
