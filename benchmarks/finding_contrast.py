"""How much each finding changes the tokens it is labelled on, at the model's resolution and window.

    python benchmarks/finding_contrast.py [--seeds 3] [--severity 0.5] [--patch 16 8] \
        [--findings lung_nodule,medical_material] [--out benchmarks/results/finding_contrast.json]

For each finding and seed, the phantom with only that finding and the same seed without it (same
anatomy and noise: they differ only where the finding is) are resampled to the model grid and
clipped to the model window [-1000, 1000] HU, as ``hyperct.preprocess`` does. Over the tokens the
finding's mask labels positive (``hyperct.training.token_labels``, one row per patch size):

* ``median_token_mean_dhu``: the median over those tokens of the mean |change| of the token's
  3 x P x P model voxels, what a linear patch embedding sees first;
* ``share_mean_over_20``: the share of those tokens whose mean |change| exceeds 20 HU;
* ``share_max_over_100``: the share with at least one model voxel changed by more than 100 HU
  (visible to a reader at the model's resolution);
* ``tokens``: how many tokens are labelled.

A backbone has to turn a few HU of mean change into a feature; the demo's patch-16 backbone finds
the findings with a median under ~6 HU at chance (issue 18). Seeds 400000.. (used nowhere else).
No model is involved: this measures the phantoms and the token labels. Prints JSON.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))

from _output import emit_json  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from hyperct.findings import catalogue  # noqa: E402
from hyperct.phantom import generate  # noqa: E402
from hyperct.preprocess import HU_MAX, HU_MIN, IMAGE_SIZE, N_IMAGES, resample_hu  # noqa: E402
from hyperct.training.token_labels import token_labels  # noqa: E402

FIRST_SEED = 400000


def token_change(with_finding: np.ndarray, without: np.ndarray, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and max |change| per token, (55, G, G) each, of two (165, 144, 144) model-grid HU volumes."""
    d = np.abs(np.clip(with_finding, HU_MIN, HU_MAX) - np.clip(without, HU_MIN, HU_MAX))
    g = IMAGE_SIZE // patch
    blocks = d.reshape(N_IMAGES, 3, g, patch, g, patch)
    return blocks.mean(axis=(1, 3, 5)), blocks.max(axis=(1, 3, 5))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="phantom pairs per finding")
    ap.add_argument("--severity", type=float, default=0.5)
    ap.add_argument("--patch", type=int, nargs="+", default=[16, 8])
    ap.add_argument("--findings", help="comma-separated finding ids (default: all 25)")
    ap.add_argument("--matrix", type=int, default=192)
    ap.add_argument("--out")
    args = ap.parse_args()

    t0 = time.time()
    ids = catalogue().ids
    chosen = args.findings.split(",") if args.findings else list(ids)
    unknown = [f for f in chosen if f not in ids]
    if unknown:
        sys.exit(f"unknown finding id(s): {', '.join(unknown)}; the ids are in assets/findings.yaml")
    rows: dict[str, dict[int, list]] = {f: {p: [] for p in args.patch} for f in chosen}
    for seed in range(FIRST_SEED, FIRST_SEED + args.seeds):
        without = resample_hu(generate(seed, {}, matrix=args.matrix).volume.hu).numpy()
        for fid in chosen:
            ph = generate(seed, {fid: args.severity}, matrix=args.matrix)
            mask = ph.masks.get(fid)
            if mask is None or not mask.any():
                continue
            hu = resample_hu(ph.volume.hu).numpy()
            for patch in args.patch:
                on = token_labels({fid: mask}, ph.volume.shape, patch=patch)[..., ids.index(fid)]
                mean, peak = token_change(hu, without, patch)
                rows[fid][patch].append(
                    (int(on.sum()), np.median(mean[on]), (mean[on] > 20).mean(), (peak[on] > 100).mean())
                )
    result: dict = {
        "benchmark": "finding_contrast_per_labelled_token",
        "seeds": [FIRST_SEED, FIRST_SEED + args.seeds - 1],
        "severity": args.severity,
        "matrix": args.matrix,
        "window_hu": [HU_MIN, HU_MAX],
        "per_finding": {},
    }
    for fid, by_patch in rows.items():
        entry = {}
        for patch, vals in by_patch.items():
            if not vals:
                continue
            a = np.asarray(vals, dtype=float)
            entry[f"patch_{patch}"] = {
                "tokens": round(float(a[:, 0].mean()), 1),
                "median_token_mean_dhu": round(float(a[:, 1].mean()), 1),
                "share_mean_over_20": round(float(a[:, 2].mean()), 3),
                "share_max_over_100": round(float(a[:, 3].mean()), 3),
            }
        result["per_finding"][fid] = entry or None
    result["seconds"] = round(time.time() - t0, 1)
    emit_json(result, args.out)


if __name__ == "__main__":
    main()
