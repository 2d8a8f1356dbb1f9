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


def test_the_nodule_auc_by_diameter_reads_each_phantoms_drawn_nodule_size():
    """``nodule_by_diameter``: a pooling that scores only the phantoms whose drawn nodule is 16 mm or
    larger separates that band perfectly and no other; the phantoms' sizes come from their seeds."""
    mod = load_benchmark("probe_token_head")
    from hyperct.phantom.lesions import nodule_diameter_mm
    from hyperct.training.datasets.phantoms import drawn_severities

    def size(seed):
        sev = drawn_severities(seed).get("lung_nodule")
        return None if sev is None else nodule_diameter_mm(sev)

    sizes = {s: size(s) for s in range(1000, 2000)}
    large = [s for s, d in sizes.items() if (d or 0) >= 16][:2]
    small = [s for s, d in sizes.items() if d is not None and d < 16][:2]
    none = [s for s, d in sizes.items() if d is None][:4]

    class Data:
        pass

    ds = Data()
    ds.seeds = large + small + none
    k = catalogue().ids.index("lung_nodule")
    y = np.zeros((8, 25), dtype=np.int64)
    y[:4, k] = 1
    tok = np.zeros((8, 25))
    tok[:2, k] = 1.0  # only the large nodules score
    got = mod.nodule_by_diameter(ds, {"tok_max": list(tok)}, y)
    assert got["16-26 mm"] == {"positive": 2, "tok_max": 1.0}
    small_bands = [b for b in got if b != "16-26 mm" and got[b]["positive"]]
    assert sum(got[b]["positive"] for b in small_bands) == 2
    assert all(got[b]["tok_max"] == 0.5 for b in small_bands)
