"""Are the phantoms' lung nodules findable at model resolution, and within what one ViT image sees?

    python benchmarks/nodule_blob_oracle.py [--train 100] [--valid 200] [--cache cache/hyperct-demo]
        [--scales 2,2.5,3] [--out benchmarks/results/nodule_blob_oracle.json]
    python benchmarks/nodule_blob_oracle.py --finding lymphadenopathy [--scales 1.5,2,2.5,3]

Every stage-1 backbone so far leaves the lung nodule at chance on the gate's probe (mean CLS, issue
18) while its token head separates nodule tokens at AUC ~0.96. Three causes would look the same:
the nodule is not findable in the model's input (165 x 144 x 144 HU, after resampling); it is, but
not within one RGB image (3 consecutive slices; HyperCT's ViT sees each image alone, so a vessel
running through the slices looks like a blob); or it is, and the backbone does not learn it. This
script answers with a hand-made detector and no training: a Hessian blob filter (bright in all
directions: the curvature of smallest magnitude is negative, scale-normalised) at a few scales,
its maximum over voxels in the lungs (smoothed air fraction > 0.6, HU > -700) as the volume's score,
computed three ways:

* ``volume``: 3-D Hessian over the whole model grid (context across images),
* ``triplet``: 3-D Hessian within each RGB image's 3 slices alone (what one ViT image sees),
* ``slice``: 2-D Hessian of each slice (no context across slices at all),

and a non-specific baseline: how many dense voxels the lungs hold (``dense_lung_voxels``; other
lung findings raise it too). The scale of each view is chosen on the training phantoms (seeds
100000..) and reported on the validation phantoms (seeds 200000.., the probe's), with every scale's
AUC alongside (the phantoms of ``probe_backbone.py``, ``probe_datasets``). Scales are in model-grid
voxels (in-plane; slices get 0.7x). For the lung nodule, the validation AUC of each chosen view is
also given with the positives split by the drawn diameter of their largest nodule
(``valid_auc_by_diameter``). ``--finding lymphadenopathy`` looks for the blob in soft tissue within
fat instead (``--region fat``: the mediastinal and axillary fat the enlarged nodes sit in; the
baseline counts those voxels). Cached phantoms are read.
Prints JSON.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import emit_json  # noqa: E402
from probe_backbone import oracle_arguments, probe_datasets  # noqa: E402

from hyperct.findings import catalogue  # noqa: E402
from hyperct.preprocess import N_IMAGES  # noqa: E402
from hyperct.training.metrics import roc_auc  # noqa: E402

SCALES = (2.0, 2.5, 3.0)
Z_FACTOR = 0.7  # slices are thicker than in-plane pixels on the model grid
DIAMETER_BANDS_MM = ((8, 12), (12, 16), (16, 26))  # the generator draws 8-25 mm


def blob_3d(v: np.ndarray, sigma: tuple, where: np.ndarray, mode: str = "reflect") -> np.ndarray:
    """Scale-normalised bright-blob strength at the voxels ``where``: minus the Hessian eigenvalue of
    smallest magnitude when all three are negative, else 0."""
    if not where.any():
        return np.zeros(1)
    h = {}
    for a in range(3):
        for b in range(a, 3):
            order = [0, 0, 0]
            order[a] += 1
            order[b] += 1
            h[a, b] = ndi.gaussian_filter(v, sigma, order=order, mode=mode)[where]
    m = np.stack([np.stack([h[min(a, b), max(a, b)] for b in range(3)], -1) for a in range(3)], -2)
    top = np.linalg.eigvalsh(m)[..., 2] * float(np.prod(sigma)) ** (2 / 3)
    return np.where(top < 0, -top, 0.0)


def blob_2d(v: np.ndarray, sigma: float, where: np.ndarray) -> np.ndarray:
    """The same in 2-D, slice by slice (no smoothing or derivative across slices)."""
    if not where.any():
        return np.zeros(1)
    s = (0.0, sigma, sigma)
    hyy = ndi.gaussian_filter(v, s, order=(0, 2, 0))[where]
    hxx = ndi.gaussian_filter(v, s, order=(0, 0, 2))[where]
    hxy = ndi.gaussian_filter(v, s, order=(0, 1, 1))[where]
    half = (hxx + hyy) / 2
    top = half + np.sqrt(np.maximum(half**2 - (hxx * hyy - hxy**2), 0.0))
    return np.where(top < 0, -top, 0.0) * sigma**2


def dense_in_lungs(hu: np.ndarray, sigma) -> np.ndarray:
    """The voxels where a blob is looked for: in the lungs (the fraction of air, < -500 HU, smoothed
    by a Gaussian of ``sigma`` voxels, above 0.6) and themselves denser than -700 HU."""
    lungs = ndi.gaussian_filter((hu < -500).astype(np.float32), sigma) > 0.6
    return lungs & (hu > -700)


def soft_tissue_in_fat(hu: np.ndarray, sigma) -> np.ndarray:
    """The voxels where an enlarged lymph node is looked for: soft tissue (-20..100 HU) where fat
    (-200..-40 HU, smoothed by a Gaussian of ``sigma`` voxels) makes up more than a fifth of the
    neighbourhood: the mediastinal and axillary fat the nodes sit in, not the lungs or muscle."""
    fat = ndi.gaussian_filter(((hu > -200) & (hu < -40)).astype(np.float32), sigma) > 0.2
    return fat & (hu > -20) & (hu < 100)


# --region: where a finding's blob is looked for, and the name of its non-specific baseline
REGIONS = {
    "lungs": (dense_in_lungs, "dense_lung_voxels"),
    "fat": (soft_tissue_in_fat, "soft_tissue_in_fat_voxels"),
}
FINDING_REGION = {"lymphadenopathy": "fat"}  # others: lungs


def volume_scores(hu: np.ndarray, scales=SCALES, region: str = "lungs") -> dict:
    """Every view's score at each of ``scales`` of one model-grid HU volume (165, H, W), the blob
    looked for in ``region`` (``REGIONS``)."""
    select, baseline = REGIONS[region]
    where = select(hu, 5)
    out = {baseline: float(where.sum())}
    images = hu.reshape(N_IMAGES, 3, *hu.shape[1:])
    image_where = where.reshape(images.shape)
    for s in scales:
        out[f"volume_{s}"] = float(blob_3d(hu, (s * Z_FACTOR, s, s), where).max())
        out[f"slice_{s}"] = float(blob_2d(hu, s, where).max())
        out[f"triplet_{s}"] = max(
            float(blob_3d(images[j], (Z_FACTOR, s, s), image_where[j], mode="nearest").max())
            for j in range(N_IMAGES)
        )
    return out


def scores_of(data, finding: int, scales=SCALES, region: str = "lungs"):
    """Each labelled phantom's ``volume_scores``, its label, and its index in ``data``."""
    rows, labels, index = [], [], []
    for i in range(len(data)):
        y = int(data.labels[i, finding])
        if y < 0:
            continue
        rows.append(volume_scores(np.asarray(data.model_hu(i), dtype=np.float32), scales, region))
        labels.append(y)
        index.append(i)
    return rows, np.array(labels), index


def nodule_diameters(data, index: list[int]) -> np.ndarray:
    """The diameter (mm) of the largest nodule the generator draws for each phantom ``index`` of
    ``data`` (its drawn severity; NaN without a nodule). Random-draw phantoms only."""
    from hyperct.phantom.lesions import nodule_diameter_mm
    from hyperct.training.datasets.phantoms import drawn_severities

    out = []
    for i in index:
        sev = drawn_severities(data.seeds[i]).get("lung_nodule")
        out.append(np.nan if sev is None else nodule_diameter_mm(sev))
    return np.asarray(out, dtype=np.float64)


def by_diameter(rows: list[dict], y: np.ndarray, diameters: np.ndarray, keys: list[str]) -> dict:
    """AUC of each score in ``keys`` with the positives restricted to one band of nodule diameter
    (all negatives kept each time): does the score find the large nodules and miss the small ones?"""
    score = {k: np.array([r[k] for r in rows]) for k in keys}
    out = {}
    for lo, hi in DIAMETER_BANDS_MM:
        pos = (y == 1) & (diameters >= lo) & (diameters < hi)
        keep = pos | (y == 0)
        band = f"{lo:g}-{hi:g} mm"
        out[band] = {"positive": int(pos.sum())}
        if pos.any():
            out[band].update({k: round(roc_auc(y[keep], s[keep]), 3) for k, s in score.items()})
    return out


def aucs(rows: list[dict], y: np.ndarray) -> dict:
    return {k: round(roc_auc(y, np.array([r[k] for r in rows])), 3) for k in rows[0]}


def main() -> None:
    ap = oracle_arguments(__doc__.split("\n")[0], 100, "choose each view's scale", "lung_nodule")
    ap.add_argument(
        "--scales",
        default=",".join(f"{s:g}" for s in SCALES),
        help="the filter scales (model-grid voxels) to compute, comma-separated",
    )
    ap.add_argument(
        "--region",
        choices=sorted(REGIONS),
        help="where the blob is looked for (default: fat for lymphadenopathy, else lungs)",
    )
    ap.add_argument("--out")
    args = ap.parse_args()
    scales = tuple(float(s) for s in args.scales.split(","))
    region = args.region or FINDING_REGION.get(args.finding, "lungs")
    t0 = time.time()
    finding = catalogue().ids.index(args.finding)
    result = {
        "benchmark": "nodule_blob_oracle",
        "finding": args.finding,
        "region": region,
        "scales_voxels": list(scales),
    }
    per_set, scored = {}, {}
    for name, data in zip(("train", "valid"), probe_datasets(args)):
        rows, y, index = scores_of(data, finding, scales, region)
        per_set[name] = aucs(rows, y)
        result[f"{name}_phantoms"] = {"labelled": int(len(y)), "positive": int(y.sum())}
        scored[name] = (rows, y, data, index)
    chosen = {}
    for view in ("volume", "triplet", "slice"):
        scale = max(scales, key=lambda s: per_set["train"][f"{view}_{s}"])
        chosen[view] = {"scale": scale, "valid_auc": per_set["valid"][f"{view}_{scale}"]}
    baseline = REGIONS[region][1]
    chosen[baseline] = {"valid_auc": per_set["valid"][baseline]}
    if args.finding == "lung_nodule":  # the validation AUC of each chosen view by nodule size
        rows, y, data, index = scored["valid"]
        keys = [f"{v}_{chosen[v]['scale']}" for v in ("volume", "triplet", "slice")]
        chosen["valid_auc_by_diameter"] = by_diameter(rows, y, nodule_diameters(data, index), keys)
    result.update(chosen=chosen, every_scale=per_set, seconds=round(time.time() - t0, 1))
    emit_json(result, args.out)


if __name__ == "__main__":
    main()
