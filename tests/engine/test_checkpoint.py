"""Checkpoint folders: safetensors + JSON manifest, verified on load, never unpickled."""

from __future__ import annotations

import json

import pytest
import torch

from hyperct.checkpoint import build_manifest, load_checkpoint, read_manifest, save_checkpoint, sha256_file
from hyperct.errors import CheckpointError
from hyperct.findings import catalogue
from hyperct.network.backbone import save_backbone
from tests.support.models import tiny_model


def _save(model, path, weights="included", **kw):
    manifest = build_manifest(
        model,
        model_name="test",
        model_version="9.9",
        backbone_weights=weights,
        backbone_source="tiny random backbone",
        thresholds={"pleural_effusion": 0.3},
        **kw,
    )
    return save_checkpoint(model, path, manifest)


def test_roundtrip_gives_identical_scores_and_complete_manifest(tmp_path, pixels, monkeypatch):
    model = tiny_model(seed=5)
    _save(model, tmp_path / "ckpt", training_data="unit test")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a checkpoint must never be unpickled"))
    loaded, manifest = load_checkpoint(tmp_path / "ckpt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels), model(pixels), atol=0, rtol=0)
    raw = json.loads((tmp_path / "ckpt" / "manifest.json").read_text())
    assert raw["format_version"] == 1 and raw["findings"] == catalogue().ids
    assert raw["weights_sha256"] == sha256_file(tmp_path / "ckpt" / "model.safetensors")
    assert raw["thresholds"]["pleural_effusion"] == 0.3 and raw["thresholds"]["lung_nodule"] == 0.5
    assert raw["architecture"]["rank"] == 4 and raw["architecture"]["backbone"]["hidden_size"] == 48
    assert raw["backbone"]["weights"] == "included" and raw["training_data"] == "unit test"
    assert manifest.thresholds["pleural_effusion"] == 0.3
    assert not any(p.requires_grad for p in loaded.backbone.parameters())


def test_tampered_weights_are_refused(tmp_path):
    _save(tiny_model(), tmp_path / "ckpt")
    w = tmp_path / "ckpt" / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 .* does not match the manifest"):
        load_checkpoint(tmp_path / "ckpt")


def test_existing_folder_is_not_overwritten_unless_asked(tmp_path):
    _save(tiny_model(), tmp_path / "ckpt")
    before = sha256_file(tmp_path / "ckpt" / "model.safetensors")
    with pytest.raises(CheckpointError, match="already exists"):
        _save(tiny_model(seed=2), tmp_path / "ckpt")
    assert sha256_file(tmp_path / "ckpt" / "model.safetensors") == before
    model = tiny_model(seed=2)
    save_checkpoint(model, tmp_path / "ckpt", read_manifest(tmp_path / "ckpt").raw, overwrite=True)
    assert sha256_file(tmp_path / "ckpt" / "model.safetensors") != before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_external_backbone_needs_its_folder_and_must_match(tmp_path, pixels):
    model = tiny_model(seed=1)
    save_backbone(model.backbone, tmp_path / "dinov3")
    _save(
        model,
        tmp_path / "ckpt",
        weights="external",
        backbone_sha256=sha256_file(tmp_path / "dinov3" / "model.safetensors"),
    )
    with pytest.raises(CheckpointError, match="external backbone.*--backbone DIR"):
        load_checkpoint(tmp_path / "ckpt")
    loaded, _ = load_checkpoint(tmp_path / "ckpt", backbone_dir=tmp_path / "dinov3")
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels), model(pixels))
    other = tiny_model(seed=7)
    save_backbone(other.backbone, tmp_path / "other")
    with pytest.raises(Exception, match="differs from the one the checkpoint was trained with"):
        load_checkpoint(tmp_path / "ckpt", backbone_dir=tmp_path / "other")


def test_bad_manifests_are_explained(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_manifest(tmp_path / "none")
    _save(tiny_model(), tmp_path / "ckpt")
    m = tmp_path / "ckpt" / "manifest.json"
    raw = json.loads(m.read_text())
    m.write_text(json.dumps(dict(raw, findings=raw["findings"][::-1])))
    with pytest.raises(CheckpointError, match="differ from this software's 25-finding catalogue"):
        read_manifest(tmp_path / "ckpt")
    m.write_text(json.dumps(dict(raw, format_version=99)))
    with pytest.raises(CheckpointError, match="newer than this software supports"):
        read_manifest(tmp_path / "ckpt")
    m.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_manifest(tmp_path / "ckpt")


def test_written_checkpoints_and_backbones_get_ordinary_permissions(tmp_path):
    # temp files/folders (and safetensors) are 0600/0700; a checkpoint in a shared folder must be
    # readable by whoever the umask lets read the user's other files
    import os
    import stat

    from hyperct.checkpoint import update_manifest

    umask = os.umask(0o022)
    os.umask(umask)
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    model = tiny_model(seed=2)
    ckpt = _save(model, tmp_path / "ckpt")
    update_manifest(ckpt, thresholds={"lung_nodule": 0.4})
    save_backbone(model.backbone, tmp_path / "backbone")

    def mode(p):
        return stat.S_IMODE(os.stat(p).st_mode)

    assert mode(ckpt) == dir_mode
    for p in (
        ckpt / "model.safetensors",
        ckpt / "manifest.json",
        tmp_path / "backbone" / "model.safetensors",
    ):
        assert mode(p) == file_mode, p


@pytest.mark.parametrize(
    "calibration, expected",
    [
        (
            {"high_specificity": {"findings": ["lung_nodule", "lymphadenopathy"]}},
            ["lung_nodule", "lymphadenopathy"],
        ),
        ({"high_specificity": {"findings": ["lung_nodule", "no_such_finding", 3]}}, ["lung_nodule"]),
        ({"high_specificity": {"findings": "lung_nodule"}}, []),
        ({"high_specificity": ["lung_nodule"]}, []),
        ("youden", []),
        (None, []),
    ],
)
def test_high_specificity_findings_read_from_an_untrusted_manifest(calibration, expected):
    from hyperct.checkpoint import Manifest

    raw = {"thresholds": {}}
    if calibration is not None:
        raw["threshold_calibration"] = calibration
    assert Manifest(raw).high_specificity_findings == expected


def test_results_carry_the_manifests_high_specificity_flag(tmp_path):
    import numpy as np

    from hyperct.checkpoint import update_manifest
    from hyperct.inference import finding_results
    from hyperct.loading import load_model
    from tests.support.models import save_tiny_checkpoint

    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", seed=1)
    logits = np.linspace(-3, 3, 25)
    tasks = range(25)
    assert not any(
        f.high_specificity_threshold for f in finding_results(load_model(ckpt, device="cpu"), logits, tasks)
    )
    update_manifest(
        ckpt, threshold_calibration={"high_specificity": {"findings": ["lung_nodule", "emphysema"]}}
    )
    results = finding_results(load_model(ckpt, device="cpu"), logits, tasks)
    assert sorted(f.id for f in results if f.high_specificity_threshold) == ["emphysema", "lung_nodule"]
    nodule = next(f for f in results if f.id == "lung_nodule")
    assert nodule.to_dict()["high_specificity_threshold"] is True and nodule.probability is not None
