"""Does the bag objective's sampling give its labels away? A baseline that never looks at a pixel.

    python benchmarks/bag_composition_baseline.py [--phantoms 400] [--bags 4] [--cache cache/hyperct-demo]
        [--out benchmarks/results/bag_composition_baseline.json]

Stage 1's bag objective (``hyperct.training.pretrain``) labels a random bag of a phantom's images from
the token masks. Its sampler (``sample_bag``) picks at least ``positive_fraction`` of the images among
those holding a finding, so which images a bag holds depends on the phantom's labels. This script
fits, per finding, a logistic regression on the bag's *composition* alone (which of the 55 image
positions it holds, as fractions of its size) to the bag's label, on bags drawn exactly as training
draws them (bag size 8..55), training on the first half of the phantoms and scoring the bags of the
other half. AUC well above 0.5 means the objective can be met by knowing where the images come from
instead of what they show. ``positive_fraction: 0`` (uniform bags) is the label-blind control.
Phantoms: seeds 100000.. at matrix 192 (the probe's training phantoms; cached ones are read).
Prints JSON.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))

from _output import emit_json  # noqa: E402
from probe_backbone import probe_auc, rounded, summary  # noqa: E402

from hyperct.findings import catalogue  # noqa: E402
from hyperct.preprocess import N_IMAGES  # noqa: E402
from hyperct.training.cache import PreprocessCache  # noqa: E402
from hyperct.training.datasets import build_dataset  # noqa: E402
from hyperct.training.pretrain import sample_bag  # noqa: E402


def composition_bags(image_pos: list[np.ndarray], fraction: float, bags: int, seed: int):
    """(features, labels): per phantom ``bags`` bags drawn as training draws them; features are the
    55 image positions' share of the bag, labels the bag's findings (any positive image in it)."""
    rng = np.random.default_rng(seed)
    x, y = [], []
    for pos in image_pos:
        for _ in range(bags):
            which = sample_bag(pos, rng, size_min=8, size_max=N_IMAGES, positive_fraction=fraction)
            f = np.zeros(N_IMAGES, dtype=np.float32)
            f[which] = 1.0 / len(which)
            x.append(f)
            y.append(pos[which].any(axis=0).astype(np.float32))
    return np.stack(x), np.stack(y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phantoms", type=int, default=400)
    ap.add_argument("--bags", type=int, default=4, help="bags per phantom")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.0])
    ap.add_argument("--cache", default="cache/hyperct-demo")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out")
    args = ap.parse_args()
    ds = build_dataset(
        {"type": "phantom", "matrix": 192, "findings": None, "count": args.phantoms, "first_seed": 100000},
        field="phantoms",
        cache=PreprocessCache(args.cache, "uint8"),
        workers=args.workers,
    )
    image_pos = [ds.token_labels(i, 16).any(axis=(1, 2)) for i in range(len(ds))]
    half = len(image_pos) // 2
    ids = catalogue().ids
    result = {"benchmark": "bag_composition_baseline", "phantoms": len(ds), "bags_per_phantom": args.bags}
    for frac in args.fractions:
        x, y = composition_bags(image_pos[:half], frac, args.bags, seed=1)
        xv, yv = composition_bags(image_pos[half:], frac, args.bags, seed=2)
        aucs = rounded({fid: probe_auc(x, y[:, k], xv, yv[:, k], l2=1e-3) for k, fid in enumerate(ids)})
        result[f"positive_fraction_{frac:g}"] = dict(summary(aucs), per_finding=aucs)
    emit_json(result, args.out)


if __name__ == "__main__":
    main()
