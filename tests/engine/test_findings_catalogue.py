from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hyperct.findings import FINDING_IDS, catalogue

SPEC = Path(__file__).resolve().parents[3] / "shared" / "spec" / "findings.yaml"


def test_catalogue_has_25_findings_in_two_groups():
    cat = catalogue()
    assert len(cat) == 25
    assert len(cat.by_group("conventional")) == 18
    assert len(cat.by_group("opportunistic")) == 7
    assert [f.index for f in cat] == list(range(25))
    assert len(set(FINDING_IDS)) == 25


def test_lookup_by_id_and_unknown_id_error_lists_known_ids():
    cat = catalogue()
    assert cat["pleural_effusion"].name == "Pleural effusion"
    assert cat.index("medical_material") == 0
    with pytest.raises(KeyError, match="known ids: medical_material"):
        cat["pleural_efusion"]


@pytest.mark.skipif(not SPEC.exists(), reason="shared/spec not beside the checkout")
def test_catalogue_matches_the_project_spec():
    spec = yaml.safe_load(SPEC.read_text())
    cat = catalogue()
    assert [f["id"] for f in spec["findings"]] == cat.ids
    for f in spec["findings"]:
        mine = cat[f["id"]]
        assert mine.name == f["name"] and mine.group == f["group"]
        assert [(c.scheme, c.value) for c in mine.codes] == [
            (c["scheme"], c["value"]) for c in f.get("codes", [])
        ]
