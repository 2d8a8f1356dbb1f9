"""A hand-made analysis result and saliency maps: which findings are positive, and where their maps
peak, is set here (``POSITIVE``), so the report tests need no model."""

from __future__ import annotations

import numpy as np

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

WEIGHTS_SHA = "ab" * 32
# Findings made positive in the synthetic result (and where their saliency peaks: image, row, col).
POSITIVE = {"cardiomegaly": (14, 4, 4), "emphysema": (8, 3, 2), "pleural_effusion": (20, 6, 6)}


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
