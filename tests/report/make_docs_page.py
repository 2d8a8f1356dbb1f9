"""Render docs/report_page1.png (and the whole example PDF next to it, not committed).

    .venv/bin/python -m tests.report.make_docs_page [--out docs] [--dpi 110]

An illustration of the PDF report: a synthetic phantom from ``hyperct.phantom`` (falls back to the
tests' crude chest), hand-set probabilities, and Grad-CAM-shaped saliency maps made from the
phantom's finding masks (blurred to the model's 3-slice x 16 x 16-pixel token blocks). No model is
run: there are no trained weights to show. Needs poppler's ``pdftoppm``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from hyperct import INTENDED_USE
from hyperct.findings import catalogue
from hyperct.inference import PREPROCESSING, describe_input
from hyperct.preprocess import resample_hu
from hyperct.report.document import build_document
from hyperct.report.pdf import render_pdf
from hyperct.results import CALL_ABSENT, CALL_PRESENT, AnalysisResult, FindingResult, ModelInfo
from hyperct.saliency import SaliencyMaps

POSITIVE = {"cardiomegaly": 0.91, "emphysema": 0.84, "pleural_effusion": 0.77}


def _scene():
    try:
        from hyperct.phantom import generate

        ph = generate(3, {"cardiomegaly": 0.8, "emphysema": 0.7, "pleural_effusion": 0.8}, matrix=256)
        return ph.volume, ph.masks
    except Exception:  # noqa: BLE001 - the phantom generator is optional here
        from tests.report.conftest import make_volume

        vol = make_volume()
        return vol, {}


def _token_map(mask: np.ndarray) -> np.ndarray:
    m = resample_hu(mask.astype(np.float32), (165, 144, 144))
    m = np.asarray(m, dtype=np.float32).reshape(55, 3, 9, 16, 9, 16).mean(axis=(1, 3, 5))
    return m + 1e-3 * m.max()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs")
    ap.add_argument("--dpi", type=int, default=110)
    args = ap.parse_args()
    os.environ.setdefault("HYPERCT_LINK_KEY", "docs-example-key")
    vol, masks = _scene()
    rng = np.random.default_rng(11)
    findings = []
    for f in catalogue():
        p = POSITIVE.get(f.id, float(rng.beta(1.3, 7.0)))
        findings.append(
            FindingResult(
                f.index,
                f.id,
                f.name,
                f.group,
                p,
                float(np.log(p / (1 - p))),
                0.5,
                CALL_PRESENT if p >= 0.5 else CALL_ABSENT,
            )
        )
    result = AnalysisResult(
        findings=findings,
        model=ModelInfo(
            name="HyperCT-demo",
            version="0.1.0",
            weights_sha256=hashlib.sha256(b"illustration").hexdigest(),
            backbone="demo (hyperct demo ViT)",
            is_demo=True,
            intended_use=INTENDED_USE,
            threshold_method="default 0.5 (not calibrated)",
            directory="",
        ),
        device="cpu",
        seconds=1.0,
        input=describe_input(vol),
        preprocessing=dict(PREPROCESSING, source_shape=list(vol.shape)),
        warnings=list(vol.warnings),
    )
    sal = SaliencyMaps(method="gradcam", source_shape=vol.shape)
    for fid in POSITIVE:
        if fid in masks:
            sal.model_maps[fid] = _token_map(masks[fid])
    if not sal.model_maps:
        from tests.report.conftest import make_saliency

        sal = make_saliency(vol)
    doc = build_document(
        result,
        vol,
        sal,
        report_id="3f2b8c1e-7a4d-4e9b-9c2a-5d1e0f6a7b8c",
        created="2025-01-07T14:36:00+00:00",
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pdf = render_pdf(doc, vol, sal)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "report.pdf"
        path.write_bytes(pdf)
        subprocess.run(
            [
                "pdftoppm",
                "-png",
                "-r",
                str(args.dpi),
                "-f",
                "1",
                "-l",
                "1",
                "-singlefile",
                str(path),
                str(out / "report_page1"),
            ],
            check=True,
        )
        (Path(tempfile.gettempdir()) / "hyperct_example_report.pdf").write_bytes(pdf)
    print(out / "report_page1.png")


if __name__ == "__main__":
    main()
