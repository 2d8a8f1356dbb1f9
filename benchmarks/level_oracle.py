"""How much of stage 1's per-image targets is where an image lies, not what it holds?

    python benchmarks/level_oracle.py [--train 400] [--valid 200] [--cache cache/hyperct-demo]
        [--out benchmarks/results/level_oracle.json]

Two stage-1 objectives ask each image's CLS for a number of that image: the per-image heart shares
(``optim.heart_slice_loss_weight``, ``hyperct.training.heart_slices``: the mL of each heart structure
inside the image) and the station tissue (``optim.station_loss_weight``, ``hyperct.training.
station_tissue``: the mL of soft tissue near each of the 8 central lymph-node stations). Their
validation R2 reads 0.80 and 0.19 while the mean CLS carries little of the volumes' own amounts (the
probe: LV radius R2 0.26, station totals 0.14; issue 18). This script measures, with no model at all,
what a predictor gets that knows only where each image lies and nothing of what it holds, scored on
the validation phantoms as R2 per target, as stage 1 scores its heads:

* ``stations``: the mean mL at each image's z offset from each station (the generator's anatomy) over
  the training phantoms without enlarged nodes (``station_tissue.level_table``); beside it the same
  with a table per lymph-node label (what the finding itself adds), the spread of what is left
  (``excess``: the targets less the level's normal, the constants of the excess objective), and the
  validation AUC of each volume's largest station excess summed over its images (the excess keeps
  the finding);
* ``heart``: the mean mL of each heart structure at each image's offset from the heart's centroid
  (taken from the phantom's own whole-heart shares: where the heart is, not how large its parts are),
  over all training phantoms; beside it the same profile scaled by the phantom's own total of that
  structure (the amount known too: the ceiling of a read-out of the volume's amounts).

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
from hyperct.training.heart_slices import SLICE_FIELDS  # noqa: E402
from hyperct.training.metrics import roc_auc  # noqa: E402
from hyperct.training.station_tissue import STATION_FIELDS, level_expected, level_table  # noqa: E402

HEART_REACH = 20  # images either side of the heart's centroid with a profile of their own


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
    """R2 of (P, 55, F) ``pred`` per target, over every image of every phantom."""
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


def heart_offsets(shares: np.ndarray, heart: int) -> np.ndarray:
    """(P, 55) each image's offset (images, rounded, clipped to +-``HEART_REACH``) from the centroid of
    the phantom's own whole-heart shares (column ``heart`` of (P, 55, F) ``shares``)."""
    w = shares[..., heart]
    idx = np.arange(shares.shape[1], dtype=np.float64)
    centre = (w * idx).sum(1) / np.maximum(w.sum(1), 1e-9)
    return np.clip(np.round(idx[None] - centre[:, None]), -HEART_REACH, HEART_REACH).astype(int)


def heart_level(shares: np.ndarray, offsets: np.ndarray, offsets_v: np.ndarray) -> np.ndarray:
    """The mean (over ``shares``' phantoms) of each structure at each offset, at ``offsets_v``."""
    pred = np.zeros((*offsets_v.shape, shares.shape[-1]), dtype=np.float32)
    for d in range(-HEART_REACH, HEART_REACH + 1):
        at = offsets == d
        if at.any():
            pred[offsets_v == d] = shares[at].mean(0)
    return pred


def scaled_by_total(level: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``level`` scaled, per phantom and target, to the phantom's own total (the amount known)."""
    return level * truth.sum(1, keepdims=True) / np.maximum(level.sum(1, keepdims=True), 1e-9)


def main() -> None:
    ap = oracle_arguments(__doc__.split("\n")[0], 400, "give the tables", "lymphadenopathy")
    ap.add_argument("--out")
    args = ap.parse_args()
    t0 = time.time()
    finding = catalogue().ids.index(args.finding)
    train, valid = probe_datasets(args)

    def named(fields, values) -> dict:
        return {f: round(float(v), 3) for f, v in zip(fields, values)}

    tt, ot, yt = station_arrays(train, finding)
    tv, ov, yv = station_arrays(valid, finding)
    table = level_table(tt[yt == 0], ot[yt == 0])
    level = level_expected(ov, table)
    excess_train = tt - level_expected(ot, table)
    totals = (tv - level).sum(1)  # (P, 8) each volume's excess at each station
    sd = excess_train.sum(1)[yt == 0].std(0) + 1e-3
    level_r2, label_r2 = r2(level, tv), r2(by_label(tt, ot, yt, ov, yv), tv)
    stations = {
        "finding": args.finding,
        "train_phantoms": {"labelled": int(len(yt)), "positive": int(yt.sum())},
        "valid_phantoms": {"labelled": int(len(yv)), "positive": int(yv.sum())},
        "valid_r2_level_only": named(STATION_FIELDS, level_r2),
        "valid_mean_r2_level_only": round(float(level_r2.mean()), 3),
        "valid_r2_level_and_label": named(STATION_FIELDS, label_r2),
        "valid_mean_r2_level_and_label": round(float(label_r2.mean()), 3),
        "images_holding_station_tissue": named(STATION_FIELDS, (tv > 0).mean((0, 1))),
        "target_sd_ml": named(STATION_FIELDS, tt.std((0, 1))),
        "excess_sd_ml": named(STATION_FIELDS, excess_train.std((0, 1))),
        "valid_auc_largest_total_excess": round(float(roc_auc(yv, (totals / sd).max(1))), 3),
        "level_table_ml": {f: [round(float(x), 4) for x in row] for f, row in zip(STATION_FIELDS, table)},
    }

    ht = np.stack([train.heart_slices(i) for i in range(len(train))])
    hv = np.stack([valid.heart_slices(i) for i in range(len(valid))])
    whole = list(SLICE_FIELDS).index("heart")
    h_level = heart_level(ht, heart_offsets(ht, whole), heart_offsets(hv, whole))
    h_r2, h_scaled = r2(h_level, hv), r2(scaled_by_total(h_level, hv), hv)
    heart = {
        "train_phantoms": len(ht),
        "valid_phantoms": len(hv),
        "valid_r2_level_only": named(SLICE_FIELDS, h_r2),
        "valid_mean_r2_level_only": round(float(h_r2.mean()), 3),
        "valid_r2_level_scaled_by_total": named(SLICE_FIELDS, h_scaled),
        "valid_mean_r2_level_scaled_by_total": round(float(h_scaled.mean()), 3),
    }
    emit_json(
        {
            "benchmark": "level_oracle",
            "stations": stations,
            "heart": heart,
            "seconds": round(time.time() - t0, 1),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
