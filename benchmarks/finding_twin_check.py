"""Is a finding visible in the model's input, and do its token labels sit where it changes the input?

    python benchmarks/finding_twin_check.py [--finding lung_nodule] [--count 10] [--first-seed 200000]
        [--out FILE]

Every stage-1 backbone leaves the lung nodule at chance on the gate probe (issue 18) while its token
head separates nodule tokens at ~0.96. Two causes would look alike to every learned detector: the
nodule is (mostly) not in the model's input after resampling, or the token labels that train the
detectors are not where the nodule is (a mapping error would still leave the labels inside the
lungs, which a lung detector scores at ~0.96). This script settles both with an oracle: each of the
first ``--count`` phantoms from ``--first-seed`` that draws the finding is rendered twice, as drawn
and without that finding (the same seed, every other finding and the noise the same), both
resampled to the model grid (165 x 144 x 144 HU, clipped as the model sees it). Per phantom: the
largest change in HU, how many voxels change by > 200 HU (and the fraction of them that were air or
lung, < -500 HU, without the finding), which 16-pixel tokens of the 55 images
change by > 300 HU somewhere in their 3 x 16 x 16 voxels, the tokens the finding's labels mark,
and how many of the changed tokens are labelled. Prints JSON.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import emit_json  # noqa: E402

from hyperct.findings import catalogue  # noqa: E402
from hyperct.phantom.generator import generate  # noqa: E402
from hyperct.preprocess import HU_MAX, HU_MIN, IMAGE_SIZE, N_IMAGES, resample_hu  # noqa: E402
from hyperct.training.datasets.phantoms import drawn_severities  # noqa: E402
from hyperct.training.token_labels import token_labels  # noqa: E402

PATCH = 16


def model_grid(phantom) -> np.ndarray:
    """(165, 144, 144) HU as the model sees it (resampled, clipped)."""
    return resample_hu(phantom.volume.hu).clamp(HU_MIN, HU_MAX).numpy()


def twin_check(seed: int, finding: str, matrix: int = 192) -> dict | None:
    """The drawn phantom ``seed`` against itself without ``finding`` (None: it does not draw it)."""
    drawn = drawn_severities(seed)
    if finding not in drawn:
        return None
    with_it = generate(seed, dict(drawn), matrix=matrix)
    without = generate(seed, {k: v for k, v in drawn.items() if k != finding}, matrix=matrix)
    before = model_grid(without)
    diff = np.abs(model_grid(with_it) - before)
    big = diff > 200.0
    g = IMAGE_SIZE // PATCH
    per_token = diff.reshape(N_IMAGES, 3, g, PATCH, g, PATCH).max(axis=(1, 3, 5))  # (55, g, g)
    k = catalogue().ids.index(finding)
    labelled = token_labels(with_it.masks, with_it.volume.shape, patch=PATCH)[..., k]
    changed = per_token > 300.0
    return {
        "seed": seed,
        "severity": round(float(drawn[finding]), 2),
        "max_change_hu": round(float(diff.max()), 1),
        "voxels_over_200_hu": int(big.sum()),
        # where those voxels were: air or lung (< -500 HU without the finding) or soft tissue / fat
        "over_200_hu_from_air_fraction": round(float((before[big] < -500.0).mean()), 3)
        if big.any()
        else None,
        "tokens_changed_over_300_hu": int(changed.sum()),
        "tokens_labelled": int(labelled.sum()),
        "changed_and_labelled": int((changed & labelled).sum()),
        "images_labelled": int(labelled.any(axis=(1, 2)).sum()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--finding", default="lung_nodule")
    ap.add_argument("--count", type=int, default=10, help="phantoms that draw the finding")
    ap.add_argument("--first-seed", type=int, default=200000)
    ap.add_argument("--matrix", type=int, default=192)
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.finding not in catalogue().ids:
        sys.exit(f"unknown finding {args.finding!r}: one of {', '.join(catalogue().ids)}")
    start, rows, seed = time.time(), [], args.first_seed
    while len(rows) < args.count and seed < args.first_seed + 100 * max(args.count, 1):
        row = twin_check(seed, args.finding, args.matrix)
        if row is not None:
            rows.append(row)
            print(f"seed {seed}: {row}", file=sys.stderr)
        seed += 1
    changed = sum(r["tokens_changed_over_300_hu"] for r in rows)
    emit_json(
        {
            "benchmark": "finding_twin_check",
            "finding": args.finding,
            "matrix": args.matrix,
            "phantoms": rows,
            "summary": {
                "phantoms": len(rows),
                "min_max_change_hu": min((r["max_change_hu"] for r in rows), default=None),
                "changed_tokens_labelled_fraction": round(
                    sum(r["changed_and_labelled"] for r in rows) / changed, 3
                )
                if changed
                else None,
            },
            "seconds": round(time.time() - start, 1),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
