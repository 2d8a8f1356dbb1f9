"""benchmarks/finding_twin_check.py: a phantom against itself without one finding changes the model
input only where that finding's token labels are, and a finding the phantom does not draw is skipped."""

from __future__ import annotations

from hyperct.training.datasets.phantoms import drawn_severities
from tests.support.benchmarks import load_benchmark


def _seed_drawing(finding: str, present: bool) -> int:
    return next(s for s in range(1000, 3000) if (finding in drawn_severities(s)) == present)


def test_the_twin_differs_by_the_nodule_and_only_on_its_labelled_tokens():
    mod = load_benchmark("finding_twin_check")
    row = mod.twin_check(_seed_drawing("lung_nodule", True), "lung_nodule", matrix=96)
    assert row["max_change_hu"] > 500  # a solid nodule in aerated lung
    assert row["tokens_changed_over_300_hu"] >= 1 and row["tokens_labelled"] >= row["changed_and_labelled"]
    assert row["changed_and_labelled"] >= 0.9 * row["tokens_changed_over_300_hu"]
    assert row["over_200_hu_from_air_fraction"] > 0.7  # the nodule replaced aerated lung (0.83 here)
    assert mod.twin_check(_seed_drawing("lung_nodule", False), "lung_nodule", matrix=96) is None
