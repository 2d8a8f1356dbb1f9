"""How much of the per-image lymph-node-station targets is where an image lies, not what it holds?

    python benchmarks/station_level_oracle.py [--train 400] [--valid 200] [--cache cache/hyperct-demo]
        [--out benchmarks/results/station_level_oracle.json]

Stage 1's station objective (``optim.station_loss_weight``, ``hyperct.training.station_tissue``) asks
each image's CLS for the mL of soft tissue near each of the 8 central lymph-node stations inside that
image. Its validation R2 stays near 0.19 while the mean CLS carries little of the volumes' station
totals (issue 18). This script measures, with no model at all, what part of those targets a
predictor gets that knows only each image's z offset from each station (the phantom's anatomy, not
its images): the mean mL at that offset over the training phantoms without enlarged nodes
(``station_tissue.level_table``), scored on the validation phantoms as R2 per station. Beside it the
same with the volume's lymph-node label added (a table per label: how much of the targets the
finding itself explains), the standard deviation of what is left (``excess``: the targets minus the
level's normal, the constants of the excess objective), and, as the check that the excess keeps the
finding, the validation AUC of each volume's largest station excess summed over its images.
Training phantoms: seeds 100000..; validation: 200000.. (the probe's, ``probe_backbone.probe_datasets``).
Prints JSON.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import emit_json  # noqa: E402
from probe_backbone import oracle_arguments, probe_datasets  # noqa: E402

from hyperct.findings import catalogue  # noqa: E402
from hyperct.training.metrics import roc_auc  # noqa: E402
from hyperct.training.station_tissue import STATION_FIELDS, level_expected, level_table  # noqa: E402


def station_arrays(data, finding: int):
    """(P, 55, 8) tissue mL and z offsets (mm) of each labelled phantom, and its label."""
    tissue, offsets, labels = [], [], []
    for i in range(len(data)):
        y = int(data.labels[i, finding])
        if y < 0:
            continue
        tissue.append(data.station_tissue(i))
        offsets.append(data.station_offsets(i))
        labels.append(y)
    return np.stack(tissue), np.stack(offsets), np.array(labels)


def r2(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """R2 of (P, 55, S) ``pred`` per station, over every image of every phantom."""
    res = ((truth - pred) ** 2).sum((0, 1))
    tot = ((truth - truth.mean((0, 1))) ** 2).sum((0, 1))
    return 1 - res / np.maximum(tot, 1e-12)


def by_label(tissue, offsets, labels, offsets_v, labels_v) -> np.ndarray:
    """The level prediction with one table per label (the finding known)."""
    pred = np.zeros(offsets_v.shape, dtype=np.float32)
    for y in (0, 1):
        pick = labels == y
        pred[labels_v == y] = level_expected(
            offsets_v[labels_v == y], level_table(tissue[pick], offsets[pick])
        )
    return pred


def main() -> None:
    ap = oracle_arguments(__doc__.split("\n")[0], 400, "give the table", "lymphadenopathy")
    ap.add_argument("--out")
    args = ap.parse_args()
    t0 = time.time()
    finding = catalogue().ids.index(args.finding)
    train, valid = probe_datasets(args)
    tt, ot, yt = station_arrays(train, finding)
    tv, ov, yv = station_arrays(valid, finding)
    table = level_table(tt[yt == 0], ot[yt == 0])
    level = level_expected(ov, table)
    excess_train = tt - level_expected(ot, table)
    excess_valid = tv - level
    totals = excess_valid.sum(1)  # (P, 8) each volume's excess at each station
    sd = excess_train.sum(1)[yt == 0].std(0) + 1e-3
    fields = list(STATION_FIELDS)

    def per_station(values) -> dict:
        return {f: round(float(v), 3) for f, v in zip(fields, values)}

    level_r2, label_r2 = r2(level, tv), r2(by_label(tt, ot, yt, ov, yv), tv)
    emit_json(
        {
            "benchmark": "station_level_oracle",
            "finding": args.finding,
            "train_phantoms": {"labelled": int(len(yt)), "positive": int(yt.sum())},
            "valid_phantoms": {"labelled": int(len(yv)), "positive": int(yv.sum())},
            "valid_r2_level_only": per_station(level_r2),
            "valid_mean_r2_level_only": round(float(level_r2.mean()), 3),
            "valid_r2_level_and_label": per_station(label_r2),
            "valid_mean_r2_level_and_label": round(float(label_r2.mean()), 3),
            "images_holding_station_tissue": per_station((tv > 0).mean((0, 1))),
            "target_sd_ml": per_station(tt.std((0, 1))),
            "excess_sd_ml": per_station(excess_train.std((0, 1))),
            "valid_auc_largest_total_excess": round(float(roc_auc(yv, (totals / sd).max(1))), 3),
            "level_table_ml": {f: [round(float(x), 4) for x in row] for f, row in zip(fields, table)},
            "seconds": round(time.time() - t0, 1),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
