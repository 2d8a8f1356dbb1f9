"""The screening summary's findings table (without running a screen)."""

from __future__ import annotations

from hyperct.findings import catalogue
from hyperct.screening.tables import summarise, summary_text


def _rows(calls: dict[str, list[str]]) -> list[dict]:
    n = len(next(iter(calls.values())))
    model = {"model_name": "tiny", "model_version": "0.0.1", "model_sha256": "0" * 64}
    return [
        {"status": "scored", **model, **{f"call_{fid}": c[i] for fid, c in calls.items()}} for i in range(n)
    ]


def test_a_high_specificity_finding_is_marked_and_explained():
    rows = _rows({"lung_nodule": ["absent", "absent"], "pleural_effusion": ["present", "absent"]})
    plain = summarise(rows, [], [], not_done=0, stats={})
    assert "99 % specificity" not in summary_text(plain)
    assert not any(c["high_specificity_threshold"] for c in plain["findings"].values())

    s = summarise(rows, [], [], not_done=0, stats={}, high_specificity=["lung_nodule"])
    assert s["findings"]["lung_nodule"] == {
        "present": 0,
        "absent": 2,
        "not_assessed": 0,
        "high_specificity_threshold": True,
    }
    assert s["findings"]["pleural_effusion"]["present"] == 1
    lines = summary_text(s).splitlines()
    nodule = next(x for x in lines if x.startswith(catalogue()["lung_nodule"].name))
    effusion = next(x for x in lines if x.startswith(catalogue()["pleural_effusion"].name))
    assert nodule.split()[:3] == ["Lung", "nodule", "*"] and "*" not in effusion
    assert len(nodule) == len(effusion)  # the columns stay aligned
    assert any(x.startswith("* Threshold set for 99 % specificity") for x in lines)
