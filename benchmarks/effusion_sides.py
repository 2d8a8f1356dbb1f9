"""Does each saliency map follow a pleural effusion from one side of the patient to the other?

The oracle pairs of ``tests/engine/test_saliency_demo.py`` (the same phantom with the effusion drawn
on the right or on the left, matrix 128) and the README's showcase (``hyperct sample --seed 4
--findings pleural_effusion:0.8``: a right effusion, matrix 512, the phantom as the command
generates it before its DICOM export), for each method: the model's probability, the share of the
map's lateral mass on the patient's right and the side of its peak token.

    python benchmarks/effusion_sides.py --out benchmarks/results/effusion_sides_demo_v08.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _output import emit_json  # noqa: E402

from hyperct.findings import catalogue  # noqa: E402
from hyperct.loading import load_model  # noqa: E402
from hyperct.phantom import generate  # noqa: E402
from hyperct.preprocess import preprocess  # noqa: E402
from hyperct.saliency import method_maps  # noqa: E402
from hyperct.saliency.evaluation import EFFUSION_SIDE_PAIRS, map_sides  # noqa: E402


def _case(model, task: int, methods: list[str], seed: int, variant: int, matrix: int) -> dict:
    ph = generate(seed, {"pleural_effusion": 0.8}, matrix=matrix, lesion_variant=variant)
    px = preprocess(ph.volume).pixel_values[None]
    with torch.no_grad():
        prob = float(torch.sigmoid(model(px, torch.tensor([task])).float())[0, 0])
    case = {
        "seed": seed,
        "lesion_variant": variant,
        "matrix": matrix,
        "effusion_sides": ph.info["pleural_effusion"]["sides"],
        "probability": round(prob, 4),
    }
    for m in methods:
        share, peak_side = map_sides(method_maps(model, px, [task], m)[0], ph.volume)
        case[m] = {
            "share_right": None if share is None else round(share, 3),
            "peak_side": peak_side or "midline",
        }
    return case


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model folder (default: the embedded demo model)")
    ap.add_argument("--methods", default="token_gradient,attention,gradcam")
    ap.add_argument(
        "--no-showcase", action="store_true", help="the oracle pairs only (the showcase is 512^2)"
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    loaded = load_model(args.model, device="cpu")
    model = loaded.model
    task = catalogue().index("pleural_effusion")
    methods = [m for m in args.methods.split(",") if m]
    pairs = []
    for seed, right, left in EFFUSION_SIDE_PAIRS:
        r = _case(model, task, methods, seed, right, 128)
        l_ = _case(model, task, methods, seed, left, 128)
        pairs.append(
            {
                "right": r,
                "left": l_,
                "share_right_moves": {
                    m: None
                    if r[m]["share_right"] is None or l_[m]["share_right"] is None
                    else round(r[m]["share_right"] - l_[m]["share_right"], 3)
                    for m in methods
                },
            }
        )
    peaks_on_side = {
        m: sum(p[s][m]["peak_side"] == p[s]["effusion_sides"][0] for p in pairs for s in ("right", "left"))
        for m in methods
    }
    result = {
        "benchmark": "effusion_sides",
        "model": {"folder": args.model or "embedded demo", "name": loaded.name, "version": loaded.version},
        "methods": methods,
        "pairs": pairs,
        "peaks_on_the_effusion_side_of_4": peaks_on_side,
        "showcase": None if args.no_showcase else _case(model, task, methods, 4, 0, 512),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    emit_json(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
