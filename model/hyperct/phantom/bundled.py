"""The bundled sample scan: the one phantom the viewer's sample data, the README screenshots and the
benchmarks use (fixed seed, five findings the demo model is meant to show)."""

from __future__ import annotations

SAMPLE_SEED = 20251
SAMPLE_FINDINGS = {
    "pleural_effusion": 0.8,
    "lung_nodule": 0.8,
    "cardiomegaly": 0.7,
    "coronary_artery_wall_calcification": 0.8,
    "emphysema": 0.6,
}
SAMPLE_MATRIX = 384


def sample_phantom():
    """The bundled sample phantom (deterministic; ~1-2 s to generate at matrix 384)."""
    from hyperct.phantom.generator import generate

    return generate(SAMPLE_SEED, findings=dict(SAMPLE_FINDINGS), matrix=SAMPLE_MATRIX)
