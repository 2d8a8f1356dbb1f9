"""Does a stage-1 backbone see a finding itself, or where it usually is? Its response on phantom pairs.

    python benchmarks/paired_response.py --run runs/demo-backbone-v1 [--findings medical_material,lung_nodule] \
        [--seeds 6] [--severity 0.5] [--out benchmarks/results/paired_response_v1.json]

``--run`` is a ``hyperct pretrain`` run folder: its backbone (``config.json`` + ``model.safetensors``)
and the heads it trained with (``last/model.safetensors``). For each finding and seed, the phantom with
only that finding and the same seed without it (same anatomy and noise: they differ only where the
finding is) go through the backbone and heads; over the finding's images and tokens (its mask,
``hyperct.training.token_labels``, at the backbone's patch):

* ``image_logit_with`` / ``image_logit_without``: the image head's mean logit for the finding on the
  images that hold it, with and without it; ``image_pairs_ranked``: the share of those images that
  score higher with the finding than without (0.5: the head does not see it);
* ``token_logit_with`` / ``token_logit_without``: the same for the token head on the labelled tokens
  (a high logit without the finding is a location prior: the head scores where the finding usually
  is); ``token_pairs_ranked``: the share of labelled tokens scoring higher with it;
* ``feature_change``: the median relative change ||h_with - h_without|| / ||h_without|| of the final
  patch features on the labelled tokens (what the backbone changes there);
* ``token_separability``: the probe's logistic regression (``probe_backbone.probe_auc``) on those
  features (with vs without), fitted leaving one seed out: the AUC on the left-out seed, averaged
  (can a linear head on these features tell the finding from the same place without it?).

Seeds 400000.. (used nowhere else). Prints JSON.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))

from _output import emit_json  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from probe_backbone import probe_auc  # noqa: E402

from hyperct.findings import catalogue  # noqa: E402
from hyperct.network.backbone import load_backbone  # noqa: E402
from hyperct.phantom import generate  # noqa: E402
from hyperct.preprocess import normalise, resample_hu  # noqa: E402
from hyperct.training.token_labels import token_labels  # noqa: E402

FIRST_SEED = 400000


def separability(x: np.ndarray, y: np.ndarray, groups: np.ndarray, l2: float = 1e-2) -> float | None:
    """Leave-one-group-out AUC of the probe's L2 logistic regression, averaged over the groups."""
    aucs = [
        probe_auc(x[groups != g], y[groups != g], x[groups == g], y[groups == g], l2)
        for g in np.unique(groups)
    ]
    aucs = [a for a in aucs if a is not None]
    return round(float(np.mean(aucs)), 3) if aucs else None


@torch.no_grad()
def outputs(backbone, heads: dict, hu: np.ndarray):
    """(55, T, D) patch features, (55, T, 25) token logits and (55, 25) image logits of a scan."""
    h = backbone(pixel_values=normalise(resample_hu(hu))).last_hidden_state
    patches = h[:, 1 + backbone.config.num_register_tokens :]
    tok = patches @ heads["heads.token.weight"].T + heads["heads.token.bias"]
    img = h[:, 0] @ heads["heads.image.weight"].T + heads["heads.image.bias"]
    return patches.numpy(), tok.numpy(), img.numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="hyperct pretrain run folder (backbone + last/ heads)")
    ap.add_argument("--findings", help="comma-separated finding ids (default: all 25)")
    ap.add_argument("--seeds", type=int, default=6, help="phantom pairs per finding")
    ap.add_argument("--severity", type=float, default=0.5)
    ap.add_argument("--matrix", type=int, default=192)
    ap.add_argument("--out")
    args = ap.parse_args()

    t0 = time.time()
    run = Path(args.run)
    state = run / "last" / "model.safetensors"
    if not state.is_file():
        sys.exit(f"no trained heads: {state} is missing; pass a hyperct pretrain run folder")
    backbone = load_backbone(run).eval()
    heads = {k: v for k, v in load_file(str(state)).items() if k.startswith("heads.")}
    patch = int(backbone.config.patch_size)
    ids = catalogue().ids
    chosen = args.findings.split(",") if args.findings else list(ids)
    unknown = [f for f in chosen if f not in ids]
    if unknown:
        sys.exit(f"unknown finding id(s): {', '.join(unknown)}; the ids are in assets/findings.yaml")

    seeds = range(FIRST_SEED, FIRST_SEED + args.seeds)
    # the scans without any finding, through the backbone once (the same for every finding)
    without = {s: outputs(backbone, heads, generate(s, {}, matrix=args.matrix).volume.hu) for s in seeds}
    result: dict = {
        "benchmark": "paired_response_of_stage1_backbone_and_heads",
        "run": str(args.run),
        "patch_size": patch,
        "seeds": [FIRST_SEED, FIRST_SEED + args.seeds - 1],
        "severity": args.severity,
        "per_finding": {},
    }
    for fid in chosen:
        k = ids.index(fid)
        acc = {n: [] for n in ("img_w", "img_wo", "tok_w", "tok_wo", "change")}
        feats, labels, groups = [], [], []
        for s in seeds:
            ph = generate(s, {fid: args.severity}, matrix=args.matrix)
            mask = ph.masks.get(fid)
            if mask is None or not mask.any():
                continue
            on = token_labels({fid: mask}, ph.volume.shape, patch=patch)[..., k].reshape(55, -1)
            pw, tw, iw = outputs(backbone, heads, ph.volume.hu)
            po, to, io = without[s]
            tw, iw, to, io = tw[..., k], iw[..., k], to[..., k], io[..., k]
            images = on.any(axis=1)
            acc["img_w"].append(iw[images])
            acc["img_wo"].append(io[images])
            acc["tok_w"].append(tw[on])
            acc["tok_wo"].append(to[on])
            acc["change"].append(np.linalg.norm(pw[on] - po[on], axis=-1) / np.linalg.norm(po[on], axis=-1))
            feats += [pw[on], po[on]]
            labels += [np.ones(on.sum()), np.zeros(on.sum())]
            groups.append(np.full(2 * on.sum(), s))
        if not feats:
            result["per_finding"][fid] = None
            continue
        a = {n: np.concatenate(v) for n, v in acc.items()}
        result["per_finding"][fid] = {
            "images": int(a["img_w"].size),
            "tokens": int(a["tok_w"].size),
            "image_logit_with": round(float(a["img_w"].mean()), 3),
            "image_logit_without": round(float(a["img_wo"].mean()), 3),
            "image_pairs_ranked": round(float((a["img_w"] > a["img_wo"]).mean()), 3),
            "token_logit_with": round(float(a["tok_w"].mean()), 3),
            "token_logit_without": round(float(a["tok_wo"].mean()), 3),
            "token_pairs_ranked": round(float((a["tok_w"] > a["tok_wo"]).mean()), 3),
            "feature_change": round(float(np.median(a["change"])), 3),
            "token_separability": separability(
                np.concatenate(feats), np.concatenate(labels), np.concatenate(groups)
            ),
        }
        print(fid, result["per_finding"][fid], file=sys.stderr, flush=True)
    result["seconds"] = round(time.time() - t0, 1)
    emit_json(result, args.out)


if __name__ == "__main__":
    main()
