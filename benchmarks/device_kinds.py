"""Which kinds of medical material does a model find? Its evaluation report, split by device.

    python benchmarks/device_kinds.py --report runs/demo-v1-stem-s3/test-report [--matrix 192]
        [--cache DIR] [--oracle-hu 990] [--no-oracle] [--out FILE]
    python benchmarks/device_kinds.py --probe runs/sa-e224 [--score 200000:200,210000:200] ...

A phantom with medical material carries one or two devices (``hyperct.phantom.lesions``: a pacemaker
with its lead, sternotomy wires, a port with its catheter, surgical clips; ``Phantom.info``). The
report's ``predictions.csv`` (``hyperct evaluate --data phantom:...``) scores every phantom; this
script renders each positive phantom again (``--matrix``: the report's) to read its devices, and
gives per device combination the number of positives, the AUC of those positives against all the
report's negatives, their median probability and the sensitivity at the report's threshold. Beside
the model, an oracle that reads the model's input in the simplest way: the number of model-grid
voxels at or above ``--oracle-hu`` (the input is clipped at 1000 HU; a phantom's bone stays below
~950 there, its metal does not), scored the same way (reads every phantom of the report: from
``--cache``, default cache/hyperct-demo, where ``hyperct evaluate`` left them, else rendered, ~1.5 s
each). Why (issue 18): v0.6's medical material AUC was 0.742 on its test phantoms and 0.875 on
validation; a finding whose kinds differ this much in how visible they are moves with the mix of
kinds a sample draws. ``--probe BACKBONE`` scores a stage-1 backbone instead: the gate probe's
logistic regression on the frozen mean CLS (``probe_backbone.py``; fitted on its 800 training
phantoms, seeds 100000..), scored on the ``--score`` phantoms (FIRST:COUNT ranges), so that
backbones can be compared by device before a stage 2 is trained on them. Prints JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import emit_json  # noqa: E402

from hyperct.phantom.generator import generate  # noqa: E402
from hyperct.training.cache import PreprocessCache  # noqa: E402
from hyperct.training.datasets.phantoms import PhantomDataset  # noqa: E402
from hyperct.training.metrics import roc_auc  # noqa: E402

FINDING = "medical_material"


def read_report(folder: Path) -> tuple[list[tuple[int, int, float]], float | None]:
    """(seed, label, probability) of every phantom with a medical material label in ``folder``'s
    predictions.csv, and the report's threshold for it (metrics.json; None if absent)."""
    rows = []
    with open(folder / "predictions.csv", newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            name, label = r["volume"], r[f"label_{FINDING}"]
            if not name.startswith("phantom-") or label in ("", "-1"):
                continue
            rows.append((int(name.split("-")[1]), int(float(label)), float(r[f"prob_{FINDING}"])))
    metrics = folder / "metrics.json"
    threshold = None
    if metrics.is_file():
        threshold = json.loads(metrics.read_text(encoding="utf-8"))["findings"][FINDING].get("threshold")
    return rows, threshold


def probe_rows(args) -> list[tuple[int, int, float]]:
    """(seed, label, probe logit) of the ``args.score`` phantoms with a medical material label: the
    gate probe of ``args.probe``'s mean CLS for medical material, fitted on its training phantoms."""
    import torch
    from probe_backbone import fit_probe, load_any_backbone, pooled_features, probe_datasets

    from hyperct.findings import catalogue

    backbone = load_any_backbone(args.probe).eval()  # (a bad folder fails before any phantom is read)
    k = catalogue().ids.index(FINDING)
    common = {"cache": args.cache, "matrix": args.matrix, "workers": 1, "train_seed": 100000}
    train, _ = probe_datasets(argparse.Namespace(**common, train=800, valid=1, valid_seed=200000))
    rows = []
    with torch.no_grad():
        probe = fit_probe(pooled_features(backbone, train)[:, 0], train.labels[:, k], 1e-2)
        for first, count in args.score:  # (the probe's phantom datasets, scored ranges as its validation)
            _, ds = probe_datasets(argparse.Namespace(**common, train=1, valid=count, valid_seed=first))
            logits = probe(pooled_features(backbone, ds)[:, 0])
            rows += [(s, int(y), float(p)) for s, y, p in zip(ds.seeds, ds.labels[:, k], logits) if y >= 0]
    return rows


def seed_ranges(text: str) -> list[tuple[int, int]]:
    """ "200000:200,210000:200" -> [(200000, 200), (210000, 200)]."""
    try:
        out = [tuple(int(v) for v in part.split(":")) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FIRST:COUNT[,FIRST:COUNT...], got {text!r}") from None
    if not out or any(len(r) != 2 or r[0] < 0 or r[1] < 1 for r in out):
        raise argparse.ArgumentTypeError(f"expected FIRST:COUNT[,FIRST:COUNT...], got {text!r}")
    return out


def metal_voxels(seeds: list[int], args) -> dict[int, int]:
    """Per phantom seed: how many of its model-grid voxels are at or above ``args.oracle_hu``."""
    first = min(seeds)
    cache = PreprocessCache(args.cache, compress=True) if args.cache else None
    ds = PhantomDataset(max(seeds) - first + 1, first, matrix=args.matrix, cache=cache, prepare=False)
    return {s: int((ds.model_hu(s - first) >= args.oracle_hu).sum()) for s in seeds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--report", help="a hyperct evaluate output folder (phantom data)")
    source.add_argument("--probe", metavar="BACKBONE", help="a stage-1 backbone folder: its gate probe")
    ap.add_argument(
        "--score",
        type=seed_ranges,
        default=[(200000, 200), (210000, 200)],
        help="with --probe: the phantoms to score, FIRST:COUNT[,...] (default 200000:200,210000:200)",
    )
    ap.add_argument("--matrix", type=int, default=192, help="the matrix the report's phantoms had")
    ap.add_argument(
        "--cache",
        default="cache/hyperct-demo",
        help="preprocessing cache (the evaluation's --cache; the probe's phantoms; missing ones are rendered)",
    )
    ap.add_argument("--oracle-hu", type=float, default=990.0, help="the oracle's HU threshold")
    ap.add_argument("--no-oracle", action="store_true", help="the model's numbers only")
    ap.add_argument("--out")
    args = ap.parse_args()
    start = time.time()
    if args.probe:
        rows, threshold = probe_rows(args), None
    else:
        folder = Path(args.report)
        if not (folder / "predictions.csv").is_file():
            sys.exit(f"no predictions.csv in {folder}: give the folder hyperct evaluate --out wrote")
        rows, threshold = read_report(folder)
    if not rows:
        sys.exit(f"no phantom with a {FINDING} label in {args.report or args.score}")
    oracle = {} if args.no_oracle else metal_voxels([r[0] for r in rows], args)
    kinds: dict[str, list[int]] = {}  # device combination -> the rows of its positives
    for row, (seed, y, p) in enumerate(rows):
        if y == 1:
            devices = generate(seed, matrix=args.matrix).info.get(FINDING, {}).get("devices") or [
                "none drawn"
            ]
            kinds.setdefault(" + ".join(devices), []).append(row)
            print(f"phantom-{seed}: {devices} {p:.3f}", file=sys.stderr)
    negatives = [row for row, (_, y, _) in enumerate(rows) if y == 0]
    prob = np.array([p for _, _, p in rows])

    def summary(positives: list[int]) -> dict:
        y = np.r_[np.zeros(len(negatives)), np.ones(len(positives))]
        ps = prob[positives]
        out = {
            "positives": len(positives),
            "auc_vs_all_negatives": round(float(roc_auc(y, prob[negatives + positives])), 3),
            "median_score": round(float(np.median(ps)), 3),  # (a probability; a logit with --probe)
        }
        if threshold is not None:
            out["sensitivity_at_threshold"] = round(float((ps >= threshold).mean()), 3)
        if oracle:
            counts = np.array([oracle[rows[r][0]] for r in negatives + positives], dtype=float)
            out["oracle_auc_vs_all_negatives"] = round(float(roc_auc(y, counts)), 3)
        return out

    emit_json(
        {
            "benchmark": "medical_material_by_device",
            "report": args.report,
            "probe": None
            if not args.probe
            else {"backbone": args.probe, "train_seeds": [100000, 100799], "scored": args.score},
            "negatives": len(negatives),
            "threshold": threshold,
            "oracle": None if args.no_oracle else f"model-grid voxels >= {args.oracle_hu:g} HU",
            "all": summary([r for rs in kinds.values() for r in rs]),
            "by_device": {k: summary(v) for k, v in sorted(kinds.items(), key=lambda kv: -len(kv[1]))},
            "seconds": round(time.time() - start, 1),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
