"""Fixtures for the report tests: a small synthetic chest CT, a hand-made result and saliency maps.

No model is needed for the document/PDF/SR tests: the result's probabilities and the saliency
maps are set here, so the tests know which findings are positive and where the maps peak.
"""

from __future__ import annotations

import numpy as np
import pytest

from hyperct import INTENDED_USE
from hyperct.findings import catalogue
from hyperct.inference import PREPROCESSING, describe_input
from hyperct.results import (
    CALL_ABSENT,
    CALL_NOT_ASSESSED,
    CALL_PRESENT,
    AnalysisResult,
    FindingResult,
    ModelInfo,
)
from hyperct.saliency import SaliencyMaps
from hyperct.volume import CTVolume

PHI = {
    "PatientName": "QUIXOTE^ALONSO^J",
    "PatientID": "PID-775533",
    "PatientBirthDate": "19470321",
    "AccessionNumber": "ACC-99120",
}
PHI_SEARCH = ("QUIXOTE", "ALONSO", "PID-775533", "19470321", "1947-03-21", "ACC-99120")
STUDY_UID = "1.2.826.0.1.3680043.8.498.1001"
SERIES_UID = "1.2.826.0.1.3680043.8.498.1002"
WEIGHTS_SHA = "ab" * 32
# Findings made positive in the synthetic result (and where their saliency peaks: image, row, col).
POSITIVE = {"cardiomegaly": (14, 4, 4), "emphysema": (8, 3, 2), "pleural_effusion": (20, 6, 6)}


def chest_hu(shape=(48, 64, 64)) -> np.ndarray:
    """A crude chest: soft-tissue body, two lungs, a heart, a spine; integer HU."""
    nk, nj, ni = shape
    k, j, i = np.indices(shape).astype(np.float32)
    cy, cx = (nj - 1) / 2, (ni - 1) / 2
    hu = np.full(shape, -1000.0, np.float32)
    body = ((j - cy) / (0.42 * nj)) ** 2 + ((i - cx) / (0.47 * ni)) ** 2 <= 1
    hu[body] = 40.0
    for side in (-1, 1):
        lung = ((j - cy + 0.03 * nj) / (0.3 * nj)) ** 2 + (
            (i - cx - side * 0.22 * ni) / (0.16 * ni)
        ) ** 2 <= 1
        hu[lung & body] = -860.0
    heart = ((j - cy + 0.1 * nj) / (0.16 * nj)) ** 2 + ((i - cx + 0.05 * ni) / (0.15 * ni)) ** 2 + (
        (k - 0.6 * nk) / (0.3 * nk)
    ) ** 2 <= 1
    hu[heart] = 45.0
    spine = ((j - cy - 0.32 * nj) / (0.07 * nj)) ** 2 + ((i - cx) / (0.07 * ni)) ** 2 <= 1
    hu[spine] = 600.0
    rng = np.random.default_rng(0)
    return (hu + rng.normal(0, 15, shape)).round().astype(np.float32)


def make_volume(*, dicom: bool = True, shape=(48, 64, 64), phi: bool = True) -> CTVolume:
    md = {
        "StudyInstanceUID": STUDY_UID,
        "SeriesInstanceUID": SERIES_UID,
        "FrameOfReferenceUID": "1.2.826.0.1.3680043.8.498.1003",
        "StudyDate": "20240105",
        "StudyTime": "101500",
        "SeriesDescription": "Chest 1.0 B30f",
        "PatientSex": "M",
        "PatientAge": "077Y",
        "Manufacturer": "ACME",
        "ManufacturerModelName": "Imaginary 64",
        "ConvolutionKernel": "B30f",
        "KVP": 120.0,
        "SliceThickness": 5.0,
    }
    if phi:
        md.update(PHI)
    if dicom:
        md["ReferencedInstances"] = [
            {
                "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
                "SOPInstanceUID": f"1.2.826.0.1.3680043.8.498.2.{n + 1}",
            }
            for n in range(shape[0])
        ]
    vol = CTVolume(
        hu=chest_hu(shape),
        spacing=(5.0, 5.0, 5.0),
        origin=(-157.5, -157.5, 100.0),
        metadata=md,
        source_paths=[f"/archive/QUIXOTE_ALONSO/ct/IM{n:04d}.dcm" for n in range(shape[0])]
        if dicom
        else ["/archive/QUIXOTE_ALONSO/ct.nii.gz"],
        source_format="dicom" if dicom else "nifti",
    )
    vol.warn("thick_slices", "slices are 5.0 mm thick; thin findings may be missed")
    return vol


def make_result(volume: CTVolume, *, not_assessed=(), demo: bool = False) -> AnalysisResult:
    cat = catalogue()
    rng = np.random.default_rng(7)
    findings = []
    for f in cat:
        if f.id in not_assessed:
            findings.append(FindingResult(f.index, f.id, f.name, f.group, None, None, 0.5, CALL_NOT_ASSESSED))
            continue
        p = float(rng.uniform(0.72, 0.97)) if f.id in POSITIVE else float(rng.uniform(0.02, 0.45))
        lg = float(np.log(p / (1 - p)))
        findings.append(
            FindingResult(
                f.index, f.id, f.name, f.group, p, lg, 0.5, CALL_PRESENT if p >= 0.5 else CALL_ABSENT
            )
        )
    model = ModelInfo(
        name="HyperCT-test",
        version="9.8.7",
        weights_sha256=WEIGHTS_SHA,
        backbone="demo (random)",
        is_demo=demo,
        intended_use=INTENDED_USE,
        threshold_method="default 0.5 (not calibrated)",
        directory="/models/test",
    )
    return AnalysisResult(
        findings=findings,
        model=model,
        device="cpu",
        seconds=0.1,
        input=describe_input(volume),
        preprocessing=dict(PREPROCESSING, source_shape=list(volume.shape)),
        warnings=list(volume.warnings),
    )


def make_saliency(volume: CTVolume, ids=None) -> SaliencyMaps:
    """Grad-CAM-like token maps (55, 9, 9): a smooth blob at a known token for the positives."""
    maps = SaliencyMaps(method="gradcam", source_shape=volume.shape)
    n, r, c = np.meshgrid(np.arange(55), np.arange(9), np.arange(9), indexing="ij")
    for f in catalogue():
        if ids is not None and f.id not in ids:
            continue
        cn, cr, cc = POSITIVE.get(f.id, (5 + f.index, 1 + f.index % 7, 7 - f.index % 7))
        maps.model_maps[f.id] = np.exp(
            -((n - cn) ** 2) / 18.0 - ((r - cr) ** 2 + (c - cc) ** 2) / 3.0
        ).astype(np.float32)
    return maps


@pytest.fixture(autouse=True)
def _private_config_dir(monkeypatch, tmp_path):
    """No test writes a link key into the real user's config folder."""
    monkeypatch.setenv("HYPERCT_CONFIG_DIR", str(tmp_path / "config-autouse"))


@pytest.fixture
def link_env(monkeypatch, tmp_path):
    """A known link key and a private config folder (no key file is written into the real home)."""
    monkeypatch.setenv("HYPERCT_LINK_KEY", "test-site-key")
    monkeypatch.setenv("HYPERCT_CONFIG_DIR", str(tmp_path / "config"))
    return b"test-site-key"


@pytest.fixture
def volume():
    return make_volume()


@pytest.fixture
def result(volume):
    return make_result(volume)


@pytest.fixture
def saliency(volume):
    return make_saliency(volume)
