"""`hyperct sample`."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from hyperct.cli.main import main


def test_sample_dicom_with_findings(tmp_path, capsys):
    out = tmp_path / "ph"
    rc = main(
        [
            "sample",
            "--out",
            str(out),
            "--seed",
            "3",
            "--findings",
            "lung_nodule:0.9,emphysema",
            "--matrix",
            "64",
            "--slices",
            "32",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "wrote 32 DICOM files" in printed and "labels.json" in printed
    assert len(list((out / "ct").glob("*.dcm"))) == 32
    meta = json.loads((out / "labels.json").read_text())
    assert meta["labels"]["lung_nodule"] == 1 and meta["labels"]["emphysema"] == 1
    assert meta["labels"]["pleural_effusion"] == 0
    assert meta["severities"]["lung_nodule"] == 0.9
    m = np.asarray(nib.load(out / meta["masks"]["lung_nodule"]).dataobj)
    assert m.shape == (64, 64, 32) and m.any()


def test_sample_nifti_normal(tmp_path):
    out = tmp_path / "n"
    assert (
        main(
            [
                "sample",
                "--out",
                str(out),
                "--format",
                "nifti",
                "--findings",
                "none",
                "--matrix",
                "48",
                "--slices",
                "20",
            ]
        )
        == 0
    )
    meta = json.loads((out / "labels.json").read_text())
    assert set(meta["labels"].values()) == {0}
    assert (out / "ct.nii.gz").exists() and not (out / "masks").exists()


def test_sample_usage_errors(tmp_path, capsys):
    rc = main(
        [
            "sample",
            "--out",
            str(tmp_path / "x"),
            "--findings",
            "lung_tumour",
            "--matrix",
            "32",
            "--slices",
            "16",
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "unknown finding id(s) 'lung_tumour'" in err and "lung_nodule" in err
    out = tmp_path / "y"
    assert main(["sample", "--out", str(out), "--findings", "none", "--matrix", "32", "--slices", "16"]) == 0
    assert main(["sample", "--out", str(out), "--findings", "none", "--matrix", "32", "--slices", "16"]) == 2
    assert "--force" in capsys.readouterr().err
    assert (
        main(
            ["sample", "--out", str(out), "--findings", "none", "--matrix", "32", "--slices", "16", "--force"]
        )
        == 0
    )
    assert main(["sample", "--out", str(out), "--findings", "emphysema:x", "--force"]) == 2
