"""``hyperct train`` on a manifest CSV of small NIfTI volumes: run folder, overrides, resume, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from hyperct.checkpoint import read_manifest
from hyperct.cli.main import main
from tests.support.training import TINY_MODEL

sitk = pytest.importorskip("SimpleITK")


def _volume(path, value):
    arr = np.full((16, 24, 24), value, dtype=np.int16)
    arr[4:12, 8:16, 8:16] += 200
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((10.0, 10.0, 12.0))
    sitk.WriteImage(img, str(path))


@pytest.fixture
def config(tmp_path):
    (tmp_path / "v").mkdir()
    rows = ["path,pleural_effusion,cardiomegaly"]
    for i in range(6):
        _volume(tmp_path / "v" / f"{i}.nii.gz", -800 + 300 * (i % 2))
        rows.append(f"v/{i}.nii.gz,{i % 2},{(i // 2) % 2}")
    (tmp_path / "train.csv").write_text("\n".join(rows[:5]) + "\n")
    (tmp_path / "valid.csv").write_text("\n".join([rows[0]] + rows[3:]) + "\n")
    cfg = {
        "seed": 1,
        "model": TINY_MODEL,
        "data": {
            "train": {"type": "manifest", "csv": str(tmp_path / "train.csv")},
            "valid": {"type": "manifest", "csv": str(tmp_path / "valid.csv")},
            "cache_dir": str(tmp_path / "cache"),
        },
        "train": {"epochs": 2, "batch_size": 2},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_cli_runs_resumes_and_refuses_to_overwrite(tmp_path, config, capsys):
    run = tmp_path / "run"
    args = [
        "train",
        "--config",
        str(config),
        "--out",
        str(run),
        "--set",
        "optim.lr=3e-4",
        "--set",
        "train.epochs=1",
    ]
    assert main(args) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["optim"]["lr"] == 3e-4 and saved["train"]["epochs"] == 1 and saved["output_dir"] == str(run)
    assert read_manifest(run / "best").raw["training"]["optimizer"]["lr"] == 3e-4
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 6  # every volume preprocessed once
    out = capsys.readouterr().out
    assert "best epoch 1" in out and str(run / "best") in out

    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err

    assert main(["train", "--resume", str(run), "--set", "train.epochs=2"]) == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2]
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 2


def test_train_cli_config_errors(tmp_path, config, capsys):
    assert (
        main(["train", "--config", str(config), "--set", "optim.lr=fast", "--out", str(tmp_path / "r")]) == 2
    )
    err = capsys.readouterr().err
    assert str(config) in err and "optim.lr: expected a positive number" in err
    assert main(["train", "--config", str(config)]) == 2
    assert "no run folder" in capsys.readouterr().err
    assert main(["train", "--config", str(config), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["train"]["type"] == "manifest" and printed["optim"]["lr"] == 1e-5
    bad = tmp_path / "bad.csv"
    bad.write_text("path,pleural_effusion\nmissing.nii.gz,1\n")
    args = ["train", "--config", str(config), "--out", str(tmp_path / "r2"), "--set", f"data.train.csv={bad}"]
    assert main(args) == 3
    err = capsys.readouterr().err
    assert "data.train" in err and "missing.nii.gz" in err and "do not exist" in err
