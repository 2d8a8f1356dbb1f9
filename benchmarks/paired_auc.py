"""Is one model's macro AUC above another's on the same scans? A paired bootstrap of the difference.

    python benchmarks/paired_auc.py OLD/test-report NEW/test-report [--rounds 2000] [--seed 0] [--out JSON]

Reads two ``hyperct evaluate`` reports' ``predictions.csv`` of the same volumes (same labels, same
order) and resamples the volumes with replacement ``--rounds`` times, scoring both models on each
resample, so the interval is that of the difference (the two models' errors on a hard scan move
together). Reports the per-finding and macro AUC of each, each model's macro with its 95 % interval
over the same resamples (is a target such as 0.90 met with room?), the macro difference (new - old)
with its 95 % interval and the share of resamples where new > old. No model is run; a few seconds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import emit_json  # noqa: E402
from call_burden import read_predictions  # noqa: E402

from hyperct.training.metrics import labelled, macro_auc, roc_auc  # noqa: E402


def _aucs(y: np.ndarray, p: np.ndarray) -> list[float]:
    """Each finding's AUC over its labelled volumes."""
    return [roc_auc(*labelled(y[:, j], p[:, j])) for j in range(y.shape[1])]


def _macro(y: np.ndarray, p: np.ndarray) -> float:
    return macro_auc(_aucs(y, p))


def _interval(values: np.ndarray) -> list[float]:
    """The 2.5 and 97.5 percentiles, rounded as the report rounds."""
    return [round(float(np.quantile(values, q)), 4) for q in (0.025, 0.975)]


def compare(old: Path, new: Path, rounds: int = 2000, seed: int = 0) -> dict:
    ids, y, p_old = read_predictions(old / "predictions.csv")
    ids_new, y_new, p_new = read_predictions(new / "predictions.csv")
    if ids != ids_new or y.shape != y_new.shape or not np.array_equal(y, y_new):
        sys.exit("the two reports are not of the same volumes and findings (labels differ)")
    rng = np.random.default_rng(seed)
    macros = np.empty((rounds, 2))  # old, new
    for i in range(rounds):
        idx = rng.integers(0, len(y), len(y))
        macros[i] = _macro(y[idx], p_old[idx]), _macro(y[idx], p_new[idx])
    macros = macros[np.isfinite(macros).all(axis=1)]
    diffs = macros[:, 1] - macros[:, 0]
    a_old, a_new = _aucs(y, p_old), _aucs(y, p_new)
    per = {f: {"old": a_old[j], "new": a_new[j]} for j, f in enumerate(ids)}
    old_m, new_m = macro_auc(a_old), macro_auc(a_new)
    return {
        "benchmark": "paired_macro_auc_difference",
        "old": str(old),
        "new": str(new),
        "volumes": len(y),
        "rounds": int(diffs.size),
        "seed": seed,
        "macro_auc_old": round(old_m, 4),
        "macro_auc_new": round(new_m, 4),
        "macro_auc_old_ci95": _interval(macros[:, 0]),
        "macro_auc_new_ci95": _interval(macros[:, 1]),
        "difference": round(new_m - old_m, 4),
        "difference_ci95": _interval(diffs),
        "share_new_above_old": round(float((diffs > 0).mean()), 4),
        "per_finding": {f: {k: round(v, 4) for k, v in d.items()} for f, d in per.items()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old", type=Path, help="the reference model's hyperct evaluate report folder")
    ap.add_argument("new", type=Path, help="the candidate's report folder, on the same volumes")
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="also write the JSON here")
    a = ap.parse_args(argv)
    emit_json(compare(a.old, a.new, a.rounds, a.seed), a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
