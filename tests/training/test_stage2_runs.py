"""benchmarks/stage2_runs.py: stage-2 runs side by side from their own logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.support.benchmarks import load_benchmark


def _module():
    return load_benchmark("stage2_runs")


def _run(root: Path, name: str, backbone: str, aucs: dict, valid_first_seed: int = 200000) -> Path:
    run = root / name
    run.mkdir()
    cfg = {
        "model": {"backbone_weights": backbone},
        "data": {"train": {"count": 800}, "valid": {"count": 200, "first_seed": valid_first_seed}},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    rows = [
        {"epoch": 1, "global_step": 100, "train_loss": 0.68, "seconds": 300.0},
        {
            "epoch": 2,
            "global_step": 200,
            "train_loss": 0.60,
            "seconds": 310.0,
            "val_auc": aucs,
            "val_mean_auc": 0.7,
        },
        {"epoch": 3, "global_step": 300, "train_loss": 0.55, "seconds": 305.0},
    ]
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return run


def test_runs_side_by_side_take_each_runs_last_validation(tmp_path, capsys):
    mod = _module()
    a = _run(tmp_path, "a", "runs/b1", {"lung_nodule": 0.5, "cardiomegaly": 0.9})
    b = _run(tmp_path, "b", "runs/b2", {"lung_nodule": 0.75, "cardiomegaly": 0.85})
    out_file = tmp_path / "out.json"
    assert mod.main([str(a), str(b), "--out", str(out_file)]) == 0
    out = json.loads(out_file.read_text())
    assert out == json.loads(capsys.readouterr().out)
    assert [r["backbone"] for r in out["runs"]] == ["runs/b1", "runs/b2"]
    assert out["runs"][0]["last_validation"]["epoch"] == 2
    assert [e["epoch"] for e in out["runs"][0]["epochs"]] == [1, 2, 3]
    assert out["same_validation_phantoms"] is True
    assert out["per_finding"]["lung_nodule"]["last_minus_first"] == pytest.approx(0.25)
    assert out["per_finding"]["cardiomegaly"][str(b)] == 0.85


def test_runs_on_other_validation_phantoms_are_flagged(tmp_path, capsys):
    mod = _module()
    a = _run(tmp_path, "a", "runs/b1", {"lung_nodule": 0.5})
    b = _run(tmp_path, "b", "runs/b2", {"lung_nodule": 0.6}, valid_first_seed=210000)
    mod.main([str(a), str(b)])
    assert json.loads(capsys.readouterr().out)["same_validation_phantoms"] is False


def test_a_folder_without_a_log_is_refused_by_name(tmp_path):
    with pytest.raises(SystemExit, match="no log.jsonl in .*not a `hyperct train` run folder"):
        _module().main([str(tmp_path)])
