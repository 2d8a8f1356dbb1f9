"""How many "present" calls a model makes per scan at its shipped thresholds, and how many are false.

    python benchmarks/call_burden.py RUN/test-report --manifest MODEL/manifest.json [--out JSON]

Reads a ``hyperct evaluate`` report's ``predictions.csv`` (a label, 1 / 0 / -1 = not labelled, and a
probability per finding and volume) and the thresholds of a model manifest (the ones a user gets),
and reports: ``calls_per_scan`` (probability >= threshold, every finding, labelled or not),
``false_calls_per_scan`` (calls on a finding labelled absent) and which findings make them
(``false_calls_per_scan_by_finding``), the pooled ``sensitivity`` and ``false_positive_rate`` over
the labelled (scan, finding) pairs, and the same per scan burden by how many findings a scan has
(``by_findings_present``: 0, 1-2, 3-4, 5-6, 7+). No model is run; it takes a second.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import emit_json  # noqa: E402

BANDS = ((0, 0), (1, 2), (3, 4), (5, 6), (7, 99))


def read_predictions(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Finding ids, labels (volumes x findings, -1 = not labelled) and probabilities."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        sys.exit(f"{path} holds no volumes")
    ids = [k[len("label_") :] for k in rows[0] if k.startswith("label_")]
    y = np.array([[float(r["label_" + f]) for f in ids] for r in rows])
    p = np.array([[float(r["prob_" + f]) for f in ids] for r in rows])
    return ids, y, p


def burden(ids: list[str], y: np.ndarray, p: np.ndarray, thresholds: dict[str, float]) -> dict:
    missing = [f for f in ids if f not in thresholds]
    if missing:
        sys.exit(f"the manifest has no threshold for {', '.join(missing)}")
    called = p >= np.array([thresholds[f] for f in ids])
    false = called & (y == 0)
    n = len(y)
    present = (y == 1).sum(axis=1)

    def per_scan(rows: np.ndarray) -> dict:
        return {
            "scans": int(rows.sum()),
            "calls_per_scan": round(float(called[rows].sum(axis=1).mean()), 2) if rows.any() else None,
            "false_calls_per_scan": round(float(false[rows].sum(axis=1).mean()), 2) if rows.any() else None,
        }

    by_finding = {f: round(float(false[:, i].sum() / n), 3) for i, f in enumerate(ids) if false[:, i].any()}
    return {
        "volumes": n,
        **{k: v for k, v in per_scan(np.ones(n, bool)).items() if k != "scans"},
        "false_calls_per_scan_by_finding": dict(sorted(by_finding.items(), key=lambda kv: -kv[1])),
        "sensitivity": round(float(called[y == 1].mean()), 3),
        "false_positive_rate": round(float(called[y == 0].mean()), 3),
        "by_findings_present": {
            f"{lo}" if lo == hi else f"{lo}-{hi}" if hi < 99 else f"{lo}+": per_scan(
                (present >= lo) & (present <= hi)
            )
            for lo, hi in BANDS
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path, help="a hyperct evaluate output folder (its predictions.csv)")
    ap.add_argument("--manifest", type=Path, required=True, help="the model's manifest.json (its thresholds)")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    ids, y, p = read_predictions(args.report / "predictions.csv")
    thresholds = json.loads(args.manifest.read_text())["thresholds"]
    result = {
        "benchmark": "call_burden",
        "report": str(args.report),
        "manifest": str(args.manifest),
        **burden(ids, y, p, thresholds),
    }
    emit_json(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
