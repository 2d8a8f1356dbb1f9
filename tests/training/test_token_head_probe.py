"""benchmarks/probe_token_head.py: ``look_alikes`` names the other findings a finding's score fires on
in the volumes that lack it."""

from __future__ import annotations

import numpy as np

from hyperct.findings import catalogue
from tests.support.benchmarks import load_benchmark


def test_look_alikes_names_the_finding_a_score_fires_on_where_its_own_is_absent():
    mod = load_benchmark("probe_token_head")
    ids = catalogue().ids
    nod, cons, eff = ids.index("lung_nodule"), ids.index("consolidation"), ids.index("pleural_effusion")
    rng = np.random.default_rng(0)
    n = 120
    y = (rng.random((n, len(ids))) < 0.3).astype(int)
    y[:5, eff] = -1  # unlabelled: left out
    s = rng.normal(size=(n, len(ids)))
    s[:, nod] = 2.0 * y[:, nod] + 3.0 * y[:, cons]  # fires on its own finding and on consolidation
    got = mod.look_alikes(s, y)
    assert list(got["lung_nodule"])[0] == "consolidation"
    assert got["lung_nodule"]["consolidation"] == 1.0  # among nodule-free volumes: consolidation first
    assert "lung_nodule" not in got["lung_nodule"]
    # a score of noise fires on nothing in particular: nothing near the planted 1.0
    assert all(a < 0.8 for a in got["pleural_effusion"].values())
