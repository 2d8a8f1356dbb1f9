"""Viewer test helpers: a tiny random checkpoint and a small synthetic CT (no trained weights needed)."""

from __future__ import annotations

import numpy as np
import pytest

from hyperct.checkpoint import build_manifest, save_checkpoint
from hyperct.volume import CTVolume
from tests.engine.conftest import tiny_model


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    model = tiny_model(seed=11)
    manifest = build_manifest(
        model,
        model_name="Tiny test model",
        model_version="0.0.1",
        backbone_weights="included",
        backbone_source="random",
    )
    return save_checkpoint(model, path, manifest)


def small_ct(n_slices: int = 40, seed: int = 0, description: str = "small synthetic") -> CTVolume:
    rng = np.random.default_rng(seed)
    hu = np.full((n_slices, 96, 96), -1000.0, np.float32)
    zz, yy, xx = np.mgrid[:n_slices, :96, :96]
    body = ((yy - 48) / 40.0) ** 2 + ((xx - 48) / 44.0) ** 2 < 1
    hu[body] = 40.0
    lungs = (((yy - 46) / 28.0) ** 2 + ((np.abs(xx - 48) - 20) / 14.0) ** 2 < 1) & body
    hu[lungs] = -850.0
    hu += rng.normal(0, 15, hu.shape).astype(np.float32)
    return CTVolume(
        hu=hu,
        spacing=(2.5, 3.5, 3.5),
        origin=(-168.0, -168.0, 50.0),
        metadata={"SeriesDescription": description, "PatientName": "DOE^JANE", "PatientID": "PID-42"},
        source_format="nifti",
        source_paths=[f"/tmp/{description.replace(' ', '_')}.nii.gz"],
    )
