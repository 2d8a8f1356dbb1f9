"""benchmarks/device_kinds.py: an evaluation report's medical material split by the devices each
positive phantom carries, each kind's positives scored against all the report's negatives; volumes
without a label are left out."""

from __future__ import annotations

import csv
import json
import sys

import pytest

from hyperct.findings import catalogue
from hyperct.phantom.generator import generate
from hyperct.training.datasets.phantoms import drawn_severities
from tests.support.benchmarks import load_benchmark

MATRIX = 64


def _seeds(present: bool, n: int) -> list[int]:
    return [s for s in range(5000, 6000) if ("medical_material" in drawn_severities(s)) == present][:n]


def _report(folder, rows, threshold=0.5):
    ids = catalogue().ids
    folder.mkdir()
    with open(folder / "predictions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["volume", *(f"label_{f}" for f in ids), *(f"prob_{f}" for f in ids)])
        for seed, label, prob in rows:
            labels = [label if f == "medical_material" else 0 for f in ids]
            probs = [prob if f == "medical_material" else 0.5 for f in ids]
            w.writerow([f"phantom-{seed}", *labels, *probs])
    (folder / "metrics.json").write_text(
        json.dumps({"findings": {"medical_material": {"threshold": threshold}}})
    )


def test_each_device_kind_is_scored_against_all_negatives(tmp_path, monkeypatch):
    mod = load_benchmark("device_kinds")
    pos, neg = _seeds(True, 3), _seeds(False, 5)
    devices = {s: " + ".join(generate(s, matrix=MATRIX).info["medical_material"]["devices"]) for s in pos}
    # the first positive scores above every negative, the others below all but the lowest one
    rows = [(pos[0], 1, 0.9), (pos[1], 1, 0.15), (pos[2], 1, 0.15)]
    rows += [(s, 0, p) for s, p in zip(neg, (0.1, 0.2, 0.3, 0.4, 0.6))]
    rows.append((9999, -1, 0.99))  # no label: left out
    _report(tmp_path / "r", rows)
    out = tmp_path / "kinds.json"
    argv = ["device_kinds.py", "--report", str(tmp_path / "r"), "--matrix", str(MATRIX), "--no-oracle"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(out)])
    mod.main()
    got = json.loads(out.read_text())
    assert got["negatives"] == 5 and got["threshold"] == 0.5
    assert got["all"]["positives"] == 3 and sum(v["positives"] for v in got["by_device"].values()) == 3
    # AUC over 3 x 5 pairs: 5 won by the first positive, 1 each by the other two
    assert got["all"]["auc_vs_all_negatives"] == pytest.approx(7 / 15, abs=1e-3)
    assert got["all"]["sensitivity_at_threshold"] == pytest.approx(1 / 3, abs=1e-3)
    assert set(got["by_device"]) == set(devices.values())
    first = got["by_device"][devices[pos[0]]]
    if first["positives"] == 1:  # its kind alone: above every negative
        assert first["auc_vs_all_negatives"] == 1.0


def test_score_ranges_are_parsed_and_bad_ones_refused():
    import argparse

    mod = load_benchmark("device_kinds")
    assert mod.seed_ranges("200000:200,210000:50") == [(200000, 200), (210000, 50)]
    for bad in ("12", "a:b", "1:0", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            mod.seed_ranges(bad)
