"""How much one finding's score follows the others': crosstalk in a ``hyperct evaluate`` report.

    python benchmarks/score_crosstalk.py RUN/test-report [OTHER/test-report ...] [--out JSON]

Reads each report's ``predictions.csv`` (a label and a probability per finding and volume) and
reports, per report:

* ``score_rho_median``: the median over finding pairs of the Spearman correlation of their
  probabilities across the volumes, beside ``label_rho_median``, the same for the labels (missing
  labels left out pairwise). Scores that correlate far more than the labels do move together:
  the model scores "abnormal" more than "which finding".
* ``rho_vs_other_findings``: per finding, the Spearman correlation of its probability with the
  number of OTHER findings present, over the volumes where it is absent (labelled 0); its median and
  range. A model that scores each finding on its own evidence has ~0 here.

No model is run; a report of 300 volumes takes a second.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import emit_json  # noqa: E402


def read_predictions(report: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(finding ids, labels (V, F) with -1 = missing, probabilities (V, F)) of a report folder."""
    with open(Path(report) / "predictions.csv", newline="") as f:
        rows = list(csv.reader(f))
    head = rows[0]
    ids = [c[len("label_") :] for c in head if c.startswith("label_")]
    lab = [head.index(f"label_{i}") for i in ids]
    prob = [head.index(f"prob_{i}") for i in ids]
    labels = np.array([[float(r[j]) for j in lab] for r in rows[1:]])
    probs = np.array([[float(r[j]) if r[j] != "" else np.nan for j in prob] for r in rows[1:]])
    return ids, labels, probs


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(rankdata(a), rankdata(b))[0, 1])  # tied values share their mean rank


def crosstalk(ids: list[str], labels: np.ndarray, probs: np.ndarray) -> dict:
    n = len(ids)
    known = np.where(labels < 0, np.nan, labels)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    score_rho = [_spearman(probs[:, i], probs[:, j]) for i, j in pairs]
    label_rho = [_spearman(known[:, i], known[:, j]) for i, j in pairs]
    present = (labels == 1).sum(axis=1)
    per_finding = {}
    for k, fid in enumerate(ids):
        absent = labels[:, k] == 0
        per_finding[fid] = round(_spearman(probs[absent, k], present[absent].astype(float)), 3)
    vals = np.array([v for v in per_finding.values() if not np.isnan(v)])
    return {
        "volumes": int(len(labels)),
        "findings": n,
        "score_rho_median": round(float(np.nanmedian(score_rho)), 3),
        "label_rho_median": round(float(np.nanmedian(label_rho)), 3),
        "rho_vs_other_findings": {
            "median": round(float(np.median(vals)), 3) if len(vals) else None,
            "min": round(float(vals.min()), 3) if len(vals) else None,
            "max": round(float(vals.max()), 3) if len(vals) else None,
            "per_finding": per_finding,
        },
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reports", nargs="+", help="hyperct evaluate report folders (with predictions.csv)")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    result = {"benchmark": "score_crosstalk", "reports": {}}
    for report in args.reports:
        result["reports"][str(report)] = crosstalk(*read_predictions(report))
    emit_json(result, args.out)


if __name__ == "__main__":
    main()
