"""Compare stage-2 (``hyperct train``) runs finding by finding from their own logs (issue 18).

    python benchmarks/stage2_runs.py runs/s2ab-v1 runs/s2ab-v1w [--out FILE]

Reads each run folder's ``log.jsonl`` (one line per epoch; validated epochs carry ``val_auc`` per
finding on the run's validation phantoms) and prints JSON: per run, its backbone, the epochs with
their training loss, seconds and validation mean AUC, and the last validation's per-finding AUCs;
then, per finding, the runs side by side with the difference of the last run from the first. Runs
compare directly only when they validated on the same phantoms (the script says whether they did).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import emit_json  # noqa: E402


def summarise(run: Path) -> dict:
    log = run / "log.jsonl"
    if not log.is_file():
        raise SystemExit(f"no log.jsonl in {run}: not a `hyperct train` run folder")
    rows = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    cfg = (
        yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
        if (run / "config.yaml").is_file()
        else {}
    )
    validated = [r for r in rows if r.get("val_auc")]
    return {
        "run": str(run),
        "backbone": (cfg.get("model") or {}).get("backbone_weights"),
        "train": (cfg.get("data") or {}).get("train"),
        "valid": (cfg.get("data") or {}).get("valid"),
        "epochs": [
            {k: r.get(k) for k in ("epoch", "global_step", "train_loss", "lr", "seconds", "val_mean_auc")}
            for r in rows
        ],
        "last_validation": {"epoch": validated[-1]["epoch"], "val_auc": validated[-1]["val_auc"]}
        if validated
        else None,
    }


def side_by_side(runs: list[dict]) -> dict:
    """{finding: {run: auc, ..., "last_minus_first": d}} over the findings every run validated."""
    valid = [r for r in runs if r["last_validation"]]
    if not valid:
        return {}
    findings = [
        f
        for f in valid[0]["last_validation"]["val_auc"]
        if all(f in r["last_validation"]["val_auc"] for r in valid)
    ]
    out = {}
    for f in findings:
        row = {r["run"]: r["last_validation"]["val_auc"][f] for r in valid}
        a, b = valid[0]["last_validation"]["val_auc"][f], valid[-1]["last_validation"]["val_auc"][f]
        row["last_minus_first"] = None if a is None or b is None else round(b - a, 4)
        out[f] = row
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args(argv)
    runs = [summarise(r) for r in args.runs]
    same_valid = len({json.dumps(r["valid"], sort_keys=True) for r in runs}) == 1
    emit_json(
        {"runs": runs, "same_validation_phantoms": same_valid, "per_finding": side_by_side(runs)}, args.out
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
