"""Which aggregation of a stage-1 run's own heads separates volumes with a finding from those without?

    python benchmarks/probe_token_head.py --run runs/demo-backbone-v1 [--valid 60] [--out FILE]

Reads a ``hyperct pretrain`` run folder (the backbone and, from ``last/model.safetensors``, its
pretraining heads) and scores validation phantoms (seeds 200000.., matrix 192, cached volumes
reused) per finding with: the token head's maximum over all 55 x 81 tokens (``tok_max``) and the
mean of its top 5 (``tok_top5mean``), the image head's maximum and mean over the 55 images, and the
bag head on the mean CLS when the run has one. Volume AUC per finding and macro (the phantom's
labels). ``tok_max_look_alikes``: per finding, the other findings its token maximum fires on in
volumes without it (``look_alikes``); ``lung_nodule_by_diameter``: each pooling's nodule AUC by the
size of the nodule. Prints JSON. A token head with a high token AUC but a low
``tok_max`` separates lesion tokens from easy tokens, not from look-alikes in a whole volume
(normal anatomy, or other findings: the look-alikes say which) (issue 18, the model card).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import emit_json  # noqa: E402

from hyperct.findings import catalogue  # noqa: E402
from hyperct.network.backbone import load_backbone  # noqa: E402
from hyperct.training.cache import PreprocessCache  # noqa: E402
from hyperct.training.datasets import PhantomDataset  # noqa: E402
from hyperct.training.metrics import roc_auc  # noqa: E402
from hyperct.training.pretrain import PretrainHeads, _ImageSampler, forward_heads  # noqa: E402
from hyperct.training.state import _read_tensors  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="hyperct pretrain run folder (with last/)")
    ap.add_argument("--valid", type=int, default=60, help="validation phantoms (seeds 200000..)")
    ap.add_argument("--cache", default="cache/hyperct-demo")
    ap.add_argument("--out")
    args = ap.parse_args()
    backbone = load_backbone(args.run).eval()
    saved = _read_tensors(str(Path(args.run) / "last" / "model.safetensors"))
    hs = {k[len("heads.") :]: v for k, v in saved.items() if k.startswith("heads.")}
    heads = PretrainHeads(
        backbone.config.hidden_size,
        25,
        volume="volume.weight" in hs,
        bag="bag.weight" in hs,
        heart=int(hs["heart.weight"].shape[0]) if "heart.weight" in hs else 0,
    )
    heads.load_state_dict(hs)
    ds = PhantomDataset(args.valid, 200000, matrix=192, cache=PreprocessCache(args.cache), prepare=False)
    ds.prepare()
    sampler = _ImageSampler(ds, backbone.config.patch_size)
    scores: dict[str, list] = {"tok_max": [], "tok_top5mean": [], "img_max": [], "img_mean": []}
    if heads.bag is not None:
        scores["bag_mean_cls"] = []
    with torch.no_grad():
        for i in range(len(ds)):
            px, _ = sampler.images(i, np.arange(55))
            tok, img, cls = forward_heads(backbone, heads, px, with_cls=True)
            tok = tok.reshape(-1, tok.shape[-1])
            scores["tok_max"].append(tok.amax(0).numpy())
            scores["tok_top5mean"].append(tok.topk(5, dim=0).values.mean(0).numpy())
            scores["img_max"].append(img.amax(0).numpy())
            scores["img_mean"].append(img.mean(0).numpy())
            if heads.bag is not None:
                scores["bag_mean_cls"].append(heads.bag(cls.mean(0)).numpy())
    y = np.asarray(ds.labels[: len(ds)])
    out = {
        "benchmark": "pretrain_heads_volume_auc",
        "run": args.run,
        "valid_phantoms": len(ds),
        "poolings": {},
    }
    for name, s in scores.items():
        s = np.asarray(s)
        per = {}
        for k, fid in enumerate(catalogue().ids):
            known = y[:, k] >= 0
            if 0 < y[known, k].sum() < known.sum():
                per[fid] = round(float(roc_auc(y[known, k], s[known, k])), 3)
        out["poolings"][name] = {
            "macro_auc": round(float(np.mean(list(per.values()))), 3),
            "per_finding": per,
        }
    out["tok_max_look_alikes"] = look_alikes(np.asarray(scores["tok_max"]), y)
    out["lung_nodule_by_diameter"] = nodule_by_diameter(ds, scores, y)
    emit_json(out, args.out)


def nodule_by_diameter(ds, scores: dict[str, list], y: np.ndarray) -> dict:
    """Every pooling's lung-nodule AUC with the positives restricted to one band of the drawn
    diameter of their largest nodule (``nodule_blob_oracle.by_diameter``; the blob filter's are
    in ``nodule_blob_oracle_by_size.json``): does the head find the large nodules at least?"""
    from nodule_blob_oracle import by_diameter, nodule_diameters

    k = catalogue().ids.index("lung_nodule")
    known = np.flatnonzero(y[:, k] >= 0)
    per = {name: np.asarray(s)[known, k] for name, s in scores.items()}
    rows = [{name: float(v[n]) for name, v in per.items()} for n in range(len(known))]
    return by_diameter(rows, y[known, k], nodule_diameters(ds, list(known)), list(scores))


def look_alikes(s: np.ndarray, y: np.ndarray, top: int = 3) -> dict:
    """``look_alikes_of`` every finding: its score ``s[:, k]`` against the labels ``y`` (n, 25)."""
    return {fid: look_alikes_of(s[:, k], y, k, top) for k, fid in enumerate(catalogue().ids)}


def look_alikes_of(score: np.ndarray, y: np.ndarray, k: int, top: int = 3) -> dict:
    """What finding ``k``'s volume score fires on when the finding is absent: among the volumes
    labelled without it, the AUC with which ``score`` tells each other finding j present from absent
    (``y``: (n, 25) labels, -1 unlabelled); the ``top`` highest (above 0.5 only). A nodule score that
    ranks the volumes with consolidation first points at what it takes for a nodule."""
    neg = y[:, k] == 0
    found = {}
    for j, other in enumerate(catalogue().ids):
        yj = y[neg, j]
        known = yj >= 0
        if j != k and 0 < yj[known].sum() < known.sum():
            found[other] = round(float(roc_auc(yj[known], score[neg][known])), 3)
    best = sorted(found.items(), key=lambda kv: -kv[1])[:top]
    return {o: a for o, a in best if a > 0.5}


if __name__ == "__main__":
    main()
