"""Are the phantoms' enlarged lymph nodes findable from the mediastinum's outline, per volume?

    python benchmarks/lymph_outline_oracle.py [--train 200] [--valid 200] [--cache cache/hyperct-demo]
        [--out benchmarks/results/lymph_outline_oracle.json]

Every stage-1 backbone leaves lymphadenopathy near chance at volume level (gate probe 0.61-0.66,
issue 18) while its token head finds the node tokens (AUC ~0.97). The twin check showed where the
finding is in the input: soft tissue bulging from the mediastinum into the lung, 62-95 % of the
changed voxels lung before (`finding_twin_check.py --finding lymphadenopathy`), and a blob filter in
mediastinal fat is at chance (`nodule_blob_oracle.py --finding lymphadenopathy`). This script asks
the remaining question with a hand-made detector and no deep learning: is that bulge of the
mediastinal outline told apart from the normal outline (hila, vessels, heart) of other phantoms?

Per volume on the model grid (165 x 144 x 144 HU): the lungs (air inside the body, without the
trachea and main bronchi near the midline), and for every slice and row where both lungs are, how
far each lung's medial edge lies from the body's midline (``medial_edges``). Those distances are
binned on a grid relative to the lungs' own extent (``Z_BINS`` from apex to base, ``Y_BINS`` front
to back, each side): the outline map. Three scores, each the volume's maximum over its map:

* ``population_z``: the map's z-score against the phantoms without the finding in the training
  set (the normal range at that place of the outline; a node pushes the lung's edge outward),
* ``local_bump``: each map cell above the median of its own column over neighbouring z bins (the
  same phantom's normal outline above and below; a node is a local bump, the heart a broad one),
* ``logistic``: a ridge logistic regression on the whole z-scored map, trained on the training
  phantoms (what a linear read-out of the outline finds),

and a non-specific baseline, the lungs' volume. Beside them an oracle told where to look (``stations``):
the generator's own lymph-node stations of each phantom (its anatomy, not its findings), where the
share of soft tissue (0-100 HU) within ``STATION_MM`` of each of the 8 central stations
(``hyperct.training.station_tissue``) is z-scored
against the phantoms without the finding, the volume's score the largest: an upper bound for a
detector that finds the carina and hila and looks there. Validation AUCs (seeds 200000.., the probe's
phantoms); for the best score also its AUC against every other finding among the volumes without
lymph nodes (what else moves the outline). Prints JSON.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import emit_json  # noqa: E402
from probe_backbone import fit_probe, oracle_arguments, probe_datasets  # noqa: E402

from hyperct.findings import catalogue  # noqa: E402
from hyperct.training import station_tissue as stations  # noqa: E402
from hyperct.training.metrics import roc_auc  # noqa: E402
from hyperct.training.station_tissue import STATION_MM  # noqa: E402

Z_BINS, Y_BINS = 24, 8
AIRWAY_AREA = 80  # pixels: a small air region near the midline is the trachea or a main bronchus
AIRWAY_NEAR = 10  # pixels from the midline
BUMP_HALF = 3  # z bins each side for the local median
# ridge strengths tried for the logistic read-out (``fit_probe``)
L2_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


def lungs_of(hu: np.ndarray) -> tuple[np.ndarray, float]:
    """(lung mask, midline x) of one model-grid volume: air (< -500 HU) enclosed by the body in its
    slice, without small air regions near the body's midline (trachea, main bronchi, oesophagus)."""
    body = hu > -500
    xm = float(np.nonzero(body)[2].mean()) if body.any() else hu.shape[2] / 2
    lungs = np.zeros_like(body)
    for z in range(hu.shape[0]):
        filled = ndi.binary_fill_holes(body[z])
        air = filled & ~body[z]
        lab, n = ndi.label(air)
        if n == 0:
            continue
        idx = np.arange(1, n + 1)
        area = ndi.sum(air, lab, idx)
        cx = np.array([c[1] for c in ndi.center_of_mass(air, lab, idx)])
        keep = idx[(area >= 20) & ~((area < AIRWAY_AREA) & (np.abs(cx - xm) < AIRWAY_NEAR))]
        lungs[z] = np.isin(lab, keep)
    return lungs, xm


def medial_edges(lungs: np.ndarray, xm: float) -> np.ndarray:
    """(165, H, 2) distance in pixels from the midline to the medial edge of the lung on each side
    (image left, image right), NaN where that side has no lung in the row."""
    Z, H, W = lungs.shape
    x = np.arange(W)
    left = lungs & (x < xm)[None, None, :]
    right = lungs & (x >= xm)[None, None, :]
    out = np.full((Z, H, 2), np.nan, np.float32)
    has_l, has_r = left.any(2), right.any(2)
    edge_l = np.where(has_l, W - 1 - np.argmax(left[..., ::-1], axis=2), 0)  # rightmost left-lung pixel
    edge_r = np.argmax(right, axis=2)  # leftmost right-lung pixel
    out[..., 0] = np.where(has_l, xm - edge_l, np.nan)
    out[..., 1] = np.where(has_r, edge_r - xm, np.nan)
    return out


def outline_map(hu: np.ndarray) -> tuple[np.ndarray, float]:
    """(Z_BINS, Y_BINS, 2) mean medial-edge distance per bin of the lungs' own extent (NaN: no lung
    there), and the lungs' volume in voxels."""
    lungs, xm = lungs_of(hu)
    edges = medial_edges(lungs, xm)
    both = ~np.isnan(edges).any(2)  # rows with a lung on each side
    out = np.full((Z_BINS, Y_BINS, 2), np.nan, np.float32)
    if not both.any():
        return out, float(lungs.sum())
    zs, ys = np.nonzero(both)
    z0, z1 = zs.min(), zs.max() + 1
    y0, y1 = ys.min(), ys.max() + 1
    zb = ((zs - z0) * Z_BINS // max(z1 - z0, 1)).clip(0, Z_BINS - 1)
    yb = ((ys - y0) * Y_BINS // max(y1 - y0, 1)).clip(0, Y_BINS - 1)
    vals = edges[zs, ys]  # (n, 2)
    for s in range(2):
        total = np.zeros((Z_BINS, Y_BINS))
        count = np.zeros((Z_BINS, Y_BINS))
        np.add.at(total, (zb, yb), vals[:, s])
        np.add.at(count, (zb, yb), 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[..., s] = np.where(count > 0, total / count, np.nan)
    return out, float(lungs.sum())


def local_bump(m: np.ndarray) -> float:
    """The largest excess of a map cell over the median of its own column over the neighbouring z
    bins (``BUMP_HALF`` each side), in units of that column's median absolute deviation."""
    best = 0.0
    for z in range(Z_BINS):
        lo, hi = max(z - BUMP_HALF, 0), min(z + BUMP_HALF + 1, Z_BINS)
        window = np.concatenate([m[lo:z], m[z + 1 : hi]], axis=0)  # (k, Y, 2)
        if not np.isfinite(window).any():
            continue
        with warnings.catch_warnings():  # columns without lung in the window stay NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(window, axis=0)
            mad = np.nanmedian(np.abs(window - med), axis=0)
        excess = (m[z] - med) / (mad + 1.0)
        if np.isfinite(excess).any():
            best = max(best, float(np.nanmax(excess)))
    return best


def station_points(seed: int, matrix: int) -> tuple[np.ndarray, np.ndarray]:
    """The 8 central lymph-node stations of phantom ``seed`` on the model grid (8, 3) as (z, y, x)
    voxels, and the model grid's voxel size (z, y, x) in mm (``anatomy_of``: geometry only)."""
    from hyperct.phantom.generator import anatomy_of
    from hyperct.training.datasets.phantoms import drawn_severities

    return stations.station_points(anatomy_of(seed, drawn_severities(seed), matrix=matrix))


def station_tissue(hu: np.ndarray, points: np.ndarray, voxel_mm: np.ndarray) -> np.ndarray:
    """The share of soft tissue (0-100 HU) within ``STATION_MM`` of each point (z, y, x voxels)."""
    return stations.image_station_tissue(hu, points, voxel_mm).sum(0) / stations.ball_ml(voxel_mm)


def choose_l2(x: np.ndarray, y: np.ndarray, grid=L2_GRID, folds: int = 4) -> float:
    """The ridge strength of ``grid`` for ``fit_probe`` with the best mean AUC over ``folds`` folds of
    the training set."""
    order = np.random.default_rng(0).permutation(len(y))
    best, best_auc = grid[0], -1.0
    for l2 in grid:
        aucs = []
        for f in range(folds):
            held = np.zeros(len(y), bool)
            held[order[f::folds]] = True
            if len(set(y[held])) < 2 or len(set(y[~held])) < 2:
                continue
            aucs.append(roc_auc(y[held], fit_probe(x[~held], y[~held], l2)(x[held])))
        if aucs and np.mean(aucs) > best_auc:
            best, best_auc = l2, float(np.mean(aucs))
    return best


def maps_of(data, finding: int, matrix: int):
    """Each labelled phantom's outline map, lung volume, label, every finding's labels and the soft
    tissue share at each station (``station_tissue``)."""
    maps, volume, labels, others, stations = [], [], [], [], []
    for i in range(len(data)):
        y = int(data.labels[i, finding])
        if y < 0:
            continue
        hu = np.asarray(data.model_hu(i), dtype=np.float32)
        m, v = outline_map(hu)
        stations.append(station_tissue(hu, *station_points(int(data.seeds[i]), matrix)))
        maps.append(m)
        volume.append(v)
        labels.append(y)
        others.append(np.asarray(data.labels[i]))
    return np.stack(maps), np.array(volume), np.array(labels), np.stack(others), np.stack(stations)


def main() -> None:
    ap = oracle_arguments(__doc__.split("\n")[0], 200, "set the normal range", "lymphadenopathy")
    ap.add_argument("--out")
    args = ap.parse_args()
    t0 = time.time()
    ids = catalogue().ids
    finding = ids.index(args.finding)
    train, valid = probe_datasets(args)
    mt, vt, yt, _, st = maps_of(train, finding, args.matrix)
    mv, vv, yv, ov, sv = maps_of(valid, finding, args.matrix)
    s_mean, s_sd = st[yt == 0].mean(0), st[yt == 0].std(0) + 0.01

    normal = mt[yt == 0]
    with warnings.catch_warnings():  # map cells no normal phantom has lung in stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(normal, axis=0)
        sd = np.nanstd(normal, axis=0) + 0.5  # pixels; a floor for cells where the outline hardly varies

    def zmap(m):
        return (m - mean) / sd

    def population_z(m):
        z = zmap(m)
        return np.array([float(np.nanmax(r)) if np.isfinite(r).any() else 0.0 for r in z])

    def features(m):
        return np.nan_to_num(zmap(m), nan=0.0).reshape(len(m), -1)

    l2 = choose_l2(features(mt), yt.astype(float))
    logistic = fit_probe(features(mt), yt.astype(float), l2)

    def scores_of(m, volume, tissue):
        return {
            "population_z": population_z(m),
            "local_bump": np.array([local_bump(x) for x in m]),
            "logistic": logistic(features(m)),
            "lung_volume (baseline)": -volume,
            "stations (oracle told where)": ((tissue - s_mean) / s_sd).max(1),
        }

    scores = scores_of(mv, vv, sv)
    valid_auc = {k: round(roc_auc(yv, s), 3) for k, s in scores.items()}
    train_auc = {
        k: round(roc_auc(yt, s), 3) for k, s in scores_of(mt, vt, st).items() if k != "lung_volume (baseline)"
    }
    outline = [k for k in scores if "(" not in k]
    best = max(outline, key=lambda k: valid_auc[k])
    negatives = yv == 0
    look_alikes = {}
    for j, name in enumerate(ids):
        if j == finding:
            continue
        lab = ov[negatives, j]
        known = lab >= 0
        if known.any() and 0 < lab[known].sum() < known.sum():
            look_alikes[name] = round(roc_auc(lab[known], scores[best][negatives][known]), 3)
    look_alikes = dict(sorted(look_alikes.items(), key=lambda kv: -kv[1])[:6])
    emit_json(
        {
            "benchmark": "lymph_outline_oracle",
            "finding": args.finding,
            "map_bins": {"z": Z_BINS, "y": Y_BINS, "sides": 2},
            "train_phantoms": {"labelled": int(len(yt)), "positive": int(yt.sum())},
            "valid_phantoms": {"labelled": int(len(yv)), "positive": int(yv.sum())},
            "valid_auc": valid_auc,
            "train_auc": train_auc,
            "logistic_l2": l2,
            "best_outline_score": best,
            "station_mm": STATION_MM,
            "best_look_alikes_among_negatives": look_alikes,
            "seconds": round(time.time() - t0, 1),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
