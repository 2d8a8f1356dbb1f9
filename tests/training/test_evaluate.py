"""Evaluation report and threshold writing on a tiny checkpoint; the evaluate CLI on phantoms."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from hyperct.checkpoint import load_checkpoint, read_manifest, sha256_file
from hyperct.cli.main import main
from hyperct.errors import CheckpointError, ConfigError
from hyperct.findings import catalogue
from hyperct.loading import load_model
from hyperct.training.evaluate import compute_metrics, evaluate, write_thresholds
from hyperct.training.metrics import (
    bootstrap_auc_ci,
    roc_auc,
    sens_spec,
    specificity_threshold,
    youden_threshold,
)
from tests.support.models import save_tiny_checkpoint
from tests.support.training import CM, PE, SignalDataset

LY = catalogue().index("lymphadenopathy")


@pytest.fixture
def checkpoint(tmp_path):
    return save_tiny_checkpoint(
        tmp_path / "ckpt", seed=2, model_name="tiny", model_version="0.1", backbone_source="test"
    )


def test_compute_metrics_matches_direct_computation():
    rng = np.random.default_rng(0)
    n = 80
    labels = np.full((n, 25), -1, dtype=np.int8)
    probs = np.full((n, 25), np.nan)
    labels[:, PE] = rng.random(n) < 0.4
    probs[:, PE] = np.clip(0.3 * labels[:, PE] + rng.random(n) * 0.7, 0, 1)
    labels[:, CM] = 0  # one class only: reported, AUC n/a, not in the macro
    probs[:, CM] = rng.random(n)
    r = compute_metrics(labels, probs, n_boot=200, seed=4)
    assert [m.finding for m in r.findings] == ["cardiomegaly", "pleural_effusion"]
    pe = r.by_id("pleural_effusion")
    assert pe.auc == pytest.approx(roc_auc(labels[:, PE], probs[:, PE]))
    assert (pe.ci_low, pe.ci_high) == pytest.approx(
        bootstrap_auc_ci(labels[:, PE], probs[:, PE], n_boot=200, seed=4)
    )
    assert pe.threshold == pytest.approx(youden_threshold(labels[:, PE], probs[:, PE])[0])
    assert np.isnan(r.by_id("cardiomegaly").auc) and "cardiomegaly" not in r.youden_thresholds
    assert r.macro_auc["overall"] == pytest.approx(pe.auc) and r.macro_auc["conventional"] == pytest.approx(
        pe.auc
    )
    assert np.isnan(r.macro_auc["opportunistic"])


def _one_good_one_at_chance(n=300, seed=1):  # seed 1: the nodule AUC 0.499
    """Pleural effusion well separated; lung nodule's score independent of its label."""
    rng = np.random.default_rng(seed)
    nod = catalogue().index("lung_nodule")
    labels = np.full((n, 25), -1, dtype=np.int8)
    probs = np.full((n, 25), np.nan)
    labels[:, PE] = rng.random(n) < 0.3
    probs[:, PE] = np.clip(0.5 * labels[:, PE] + 0.5 * rng.random(n), 0, 1)
    labels[:, nod] = rng.random(n) < 0.3
    probs[:, nod] = 0.5 + 0.5 * rng.random(n)  # at chance, and high on every scan (v0.4's nodule)
    return labels, probs, nod


def test_a_finding_at_chance_gets_a_high_specificity_threshold_not_youden():
    labels, probs, nod = _one_good_one_at_chance()
    r = compute_metrics(labels, probs, n_boot=200, seed=1)
    m = r.by_id("lung_nodule")
    assert m.ci_low < 0.5 < m.ci_high  # the setting: the data do not show a separation
    assert r.high_specificity == ["lung_nodule"]
    y, p = labels[:, nod], probs[:, nod]
    assert r.operating_thresholds["lung_nodule"] == specificity_threshold(y, p, 0.99)
    assert sens_spec(y, p, r.operating_thresholds["lung_nodule"])[1] >= 0.99
    # Youden would call most scans (the degenerate point); the operating threshold calls ~1 %
    called_youden = (p >= r.youden_thresholds["lung_nodule"]).mean()
    called_operating = (p >= r.operating_thresholds["lung_nodule"]).mean()
    assert called_operating <= 0.02 < called_youden
    # a separated finding keeps Youden's J
    assert r.operating_thresholds["pleural_effusion"] == r.youden_thresholds["pleural_effusion"]
    ops = r.summary["operating_points"]["lung_nodule"]["specificity_0.99"]
    assert ops["threshold"] == r.operating_thresholds["lung_nodule"] and ops["specificity"] >= 0.99


def test_a_finding_above_chance_but_poorly_detected_gets_a_high_specificity_threshold():
    """v0.7's lymphadenopathy: validation AUC 0.615, CI just above 0.5; at Youden's J it was called on
    41 % of the test scans, 84 % of the calls false. Below an AUC of 0.70 the threshold is set for
    specificity 0.99 as at chance; a finding detected at 0.70 or more keeps Youden's J."""
    rng = np.random.default_rng(3)
    n = 600
    labels = np.full((n, 25), -1, dtype=np.int8)
    probs = np.full((n, 25), np.nan)
    for col, shift in ((LY, 0.45), (PE, 1.2)):  # AUC ~0.62 and ~0.80
        labels[:, col] = rng.random(n) < 0.2
        probs[:, col] = 1 / (1 + np.exp(-(rng.normal(size=n) + shift * labels[:, col])))
    r = compute_metrics(labels, probs, n_boot=200, seed=1)
    weak, good = r.by_id("lymphadenopathy"), r.by_id("pleural_effusion")
    assert 0.5 < weak.ci_low and weak.auc < 0.70 <= good.ci_low  # the setting
    assert r.high_specificity == ["lymphadenopathy"]
    y, p = labels[:, LY], probs[:, LY]
    assert r.operating_thresholds["lymphadenopathy"] == specificity_threshold(y, p, 0.99)
    assert (
        (p >= r.operating_thresholds["lymphadenopathy"]).mean()
        < 0.05
        < (p >= r.youden_thresholds["lymphadenopathy"]).mean()
    )
    assert r.operating_thresholds["pleural_effusion"] == r.youden_thresholds["pleural_effusion"]


def test_min_auc_sets_the_floor_and_the_manifest_says_which(checkpoint):
    """``--min-auc 0.5`` asks only for the CI above chance (the rule before 2026-12-07): the weak
    finding keeps Youden's J; a floor of 0.85 sends the 0.80 one to high specificity too; the words
    written into the manifest name the floor used."""
    rng = np.random.default_rng(3)
    n = 600
    labels = np.full((n, 25), -1, dtype=np.int8)
    probs = np.full((n, 25), np.nan)
    for col, shift in ((LY, 0.45), (PE, 1.2)):
        labels[:, col] = rng.random(n) < 0.2
        probs[:, col] = 1 / (1 + np.exp(-(rng.normal(size=n) + shift * labels[:, col])))
    assert compute_metrics(labels, probs, n_boot=200, seed=1, min_auc=0.5).high_specificity == []
    strict = compute_metrics(labels, probs, n_boot=200, seed=1, min_auc=0.85)
    assert sorted(strict.high_specificity) == ["lymphadenopathy", "pleural_effusion"]
    write_thresholds(checkpoint, strict, data_label="synthetic validation")
    raw = read_manifest(checkpoint).raw
    assert "AUC below 0.85" in raw["threshold_calibration"]["high_specificity"]["why"]
    assert "AUC below 0.85" in raw["threshold_method"]
    for bad in (0.4, 1.0, float("nan")):
        with pytest.raises(ConfigError, match="minimum AUC"):
            compute_metrics(labels, probs, n_boot=10, min_auc=bad)


def test_write_thresholds_flags_the_findings_at_chance(checkpoint):
    labels, probs, _ = _one_good_one_at_chance()
    r = compute_metrics(labels, probs, n_boot=200, seed=1)
    write_thresholds(checkpoint, r, data_label="synthetic validation")
    man = read_manifest(checkpoint)
    assert man.thresholds["lung_nodule"] == pytest.approx(r.operating_thresholds["lung_nodule"])
    assert man.thresholds["pleural_effusion"] == pytest.approx(r.youden_thresholds["pleural_effusion"])
    assert man.thresholds["cardiomegaly"] == 0.5  # no labels: unchanged
    cal = man.raw["threshold_calibration"]
    assert (
        cal["high_specificity"]["findings"] == ["lung_nodule"]
        and cal["high_specificity"]["specificity"] == 0.99
    )
    assert (
        "specificity >= 0.99" in man.raw["threshold_method"] and "lung_nodule" in man.raw["threshold_method"]
    )
    load_checkpoint(checkpoint)  # still a valid checkpoint


def test_evaluate_writes_report_and_thresholds(tmp_path, checkpoint):
    loaded = load_model(checkpoint, device="cpu")
    data = SignalDataset(16, 9)
    out = tmp_path / "eval"
    report = evaluate(loaded, data, out, n_boot=100, data_label="synthetic", progress=False)
    names = {p.name for p in out.iterdir()}
    assert {
        "metrics.csv",
        "metrics.md",
        "metrics.json",
        "predictions.csv",
        "roc_conventional.png",
        "dca_conventional.png",
    } <= names
    assert "roc_opportunistic.png" not in names  # no opportunistic labels in these data
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["finding"] for r in rows] == ["cardiomegaly", "pleural_effusion"]
    assert set(rows[0]) >= {
        "group",
        "n",
        "positives",
        "auc",
        "ci_low",
        "ci_high",
        "threshold",
        "sensitivity",
        "specificity",
    }
    # the numbers agree with the predictions written next to them
    preds = list(csv.DictReader(open(out / "predictions.csv")))
    y = np.array([int(p["label_pleural_effusion"]) for p in preds])
    p = np.array([float(p["prob_pleural_effusion"]) for p in preds])
    assert float(rows[1]["auc"]) == pytest.approx(roc_auc(y, p), abs=1e-6)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["findings"]["pleural_effusion"]["auc"] == pytest.approx(
        report.by_id("pleural_effusion").auc
    )
    assert (
        metrics["bootstrap"]["resamples"] == 100
        and metrics["model"]["weights_sha256"] == loaded.weights_sha256
    )
    md = (out / "metrics.md").read_text()
    assert "| Pleural effusion |" in md and "Macro AUC" in md and "not a diagnosis" in md
    with pytest.raises(ConfigError, match="already holds an evaluation"):
        evaluate(loaded, data, out, n_boot=10, progress=False)

    before = sha256_file(checkpoint / "model.safetensors")
    write_thresholds(checkpoint, report, data_label="synthetic validation")
    man = read_manifest(checkpoint)
    assert sha256_file(checkpoint / "model.safetensors") == before == man.weights_sha256
    assert man.thresholds["pleural_effusion"] == pytest.approx(
        report.operating_thresholds["pleural_effusion"]
    )
    assert man.thresholds["lung_nodule"] == 0.5  # not evaluated: unchanged
    assert "Youden" in man.raw["threshold_method"] and "synthetic validation" in man.raw["threshold_method"]
    _, reloaded = load_checkpoint(checkpoint)  # still loads (sha256 verified)
    assert reloaded.thresholds == man.thresholds
    assert not list(checkpoint.glob(".manifest*"))  # no temporary files left behind


def test_update_manifest_refuses_weight_fields_and_bad_thresholds(checkpoint):
    from hyperct.checkpoint import update_manifest

    with pytest.raises(CheckpointError, match="cannot change weights_sha256"):
        update_manifest(checkpoint, weights_sha256="0" * 64)
    with pytest.raises(CheckpointError, match="probabilities"):
        update_manifest(checkpoint, thresholds={"lung_nodule": 1.5})
    with pytest.raises(CheckpointError, match="unknown findings"):
        update_manifest(checkpoint, thresholds={"lung_nodul": 0.2})


@pytest.mark.slow
def test_evaluate_cli_on_phantoms(tmp_path, checkpoint, capsys):
    pytest.importorskip("hyperct.phantom")
    out = tmp_path / "report"
    args = ["evaluate", "--model", str(checkpoint), "--data", "phantom:4:300", "--phantom-matrix", "32"]
    args += ["--out", str(out), "--bootstrap", "50", "--device", "cpu", "--cache", str(tmp_path / "cache")]
    assert main(args + ["--write-thresholds"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["n"] == 4 and metrics["data"]["label"] == "phantom:4:300"
    assert {"metrics.csv", "metrics.md", "roc_conventional.png", "dca_conventional.png"} <= {
        p.name for p in out.iterdir()
    }
    man = read_manifest(checkpoint)
    assert metrics["operating_thresholds"] and set(metrics["operating_thresholds"]) <= set(
        metrics["youden_thresholds"]
    )
    for fid, thr in metrics["operating_thresholds"].items():
        assert man.thresholds[fid] == pytest.approx(thr)
        at_chance = fid in metrics["high_specificity"]["findings"]
        assert at_chance or thr == metrics["youden_thresholds"][fid]
    assert "macro AUC overall" in capsys.readouterr().out
    assert main(args) == 2  # refuses to overwrite the report
    assert "already holds an evaluation" in capsys.readouterr().err
    assert main(args + ["--overwrite", "--min-auc", "0.3"]) == 2  # refused before the model loads
    assert "minimum AUC for a Youden threshold is 0.3" in capsys.readouterr().err
    ids = catalogue().ids
    assert set(metrics["findings"]) <= set(ids)
