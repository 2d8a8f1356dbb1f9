"""How much of each finding a frozen backbone's pooled features carry: linear-probe AUC.

    python benchmarks/probe_backbone.py --backbone runs/demo-backbone [--train 800] [--valid 200] \
        [--cache cache/hyperct-demo] [--out benchmarks/results/probe_demo_backbone.json]
    python benchmarks/probe_backbone.py --backbone assets/demo_model ...   # a checkpoint's own backbone

``--backbone`` is a DINOv3 folder (``config.json`` + ``model.safetensors``, what ``hyperct pretrain``
writes) or a HyperCT checkpoint folder with the backbone included (``manifest.json``, e.g. the
shipped demo model). ``--workers N`` generates missing phantoms in N processes. The gate of issue 18
before stage 2: mean_cls macro >= 0.92 and every finding >= 0.80 (``gate`` in the JSON).
``heart`` in the JSON: how much of the heart's geometry (chamber sizes, wall, vessel calibres) the
mean CLS carries (ridge regression, R2 per number on the validation phantoms), and what the true
geometry gives each cardiac finding with no backbone at all (``heart_probe``); ``stations`` (with
``--stations``): the same for the soft tissue near each lymph-node station and lymphadenopathy
(``station_probe``).

HyperCT's task-shared head reads the mean CLS feature over the 55 images. With a frozen backbone,
a per-finding logistic regression on that feature (and on other poolings, for comparison) is a
rough ceiling on what stage 2 can reach without changing the features much. Features of the
training phantoms (seeds 100000..) and validation phantoms (seeds 200000..) at matrix 192 (the demo
data; cached volumes are reused); L2-regularised logistic regression (LBFGS) per finding on the
labelled volumes; AUC on the validation phantoms. Prints JSON.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))

from _output import emit_json  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from hyperct.findings import catalogue  # noqa: E402
from hyperct.network.backbone import load_backbone  # noqa: E402
from hyperct.training.cache import PreprocessCache  # noqa: E402
from hyperct.training.datasets import build_dataset  # noqa: E402
from hyperct.training.metrics import roc_auc  # noqa: E402

Z_BANDS = 5  # 11 images each: 55 / 5

POOLINGS = {
    "mean_cls": slice(0, 1),
    "max_cls": slice(1, 2),
    "mean_patch": slice(2, 3),
    "max_patch": slice(3, 4),
    # the mean CLS of each fifth of the images along z, side by side: what a readout that knows each
    # image's position could use (HyperCT's stage 2 gives every image position its own LoRA through
    # the hypernetwork's position embedding; the frozen mean CLS above does not know positions)
    "zband_cls": slice(4, 4 + Z_BANDS),
}


@torch.no_grad()
def pooled_features(backbone, ds) -> np.ndarray:
    """(N, 4 + Z_BANDS, D): mean/max over images of the final CLS; mean/max over all final patch
    tokens; the mean CLS of each z band."""
    n_prefix = 1 + backbone.config.num_register_tokens
    out = []
    for i in range(len(ds)):
        px, _ = ds[i]
        h = backbone(pixel_values=px).last_hidden_state  # (55, tokens, D)
        cls, patches = h[:, 0], h[:, n_prefix:]
        bands = [band.mean(0) for band in cls.chunk(Z_BANDS)]
        out.append(
            torch.stack(
                [cls.mean(0), cls.amax(0), patches.mean((0, 1)), patches.amax((0, 1)), *bands]
            ).numpy()
        )
    return np.stack(out)


def load_any_backbone(path: str):
    """A DINOv3 folder, or the backbone inside a HyperCT checkpoint folder (manifest.json)."""
    folder = Path(path)
    if (folder / "manifest.json").is_file():
        from hyperct.checkpoint import load_checkpoint

        model, _ = load_checkpoint(folder, map_location="cpu")
        return model.backbone
    return load_backbone(folder)


def oracle_arguments(description: str, train: int, train_help: str, finding: str) -> argparse.ArgumentParser:
    """The arguments the oracle scripts share: the phantoms (``probe_datasets``: --train of them that
    ``train_help``, --valid that score it), the finding, the cache, the matrix, the workers."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--train", type=int, default=train, help=f"phantoms that {train_help} (seeds 100000..)")
    ap.add_argument("--valid", type=int, default=200, help="phantoms that score it (seeds 200000..)")
    ap.add_argument("--finding", default=finding)
    ap.add_argument("--cache", default="cache/hyperct-demo")
    ap.add_argument("--matrix", type=int, default=192)
    ap.add_argument("--workers", type=int, default=1)
    return ap


def probe_datasets(args):
    """The training / validation phantom datasets the probes share (``args``: cache, matrix, train,
    valid, workers and optionally train_seed / valid_seed)."""
    cache = PreprocessCache(args.cache, "uint8") if args.cache else PreprocessCache(None)
    spec = {"type": "phantom", "matrix": args.matrix, "findings": None}
    kw = {"cache": cache, "workers": args.workers}
    first = getattr(args, "train_seed", 100000), getattr(args, "valid_seed", 200000)
    train = build_dataset(dict(spec, count=args.train, first_seed=first[0]), field="train", **kw)
    valid = build_dataset(dict(spec, count=args.valid, first_seed=first[1]), field="valid", **kw)
    return train, valid


def probe_data(args):
    """The frozen backbone (``args.backbone``) and ``probe_datasets``."""
    backbone = load_any_backbone(args.backbone).eval()
    return (backbone, *probe_datasets(args))


def summary(aucs: dict) -> dict:
    """Macro and lowest AUC over the findings that have one (None: no positives or no negatives)."""
    vals = [v for v in aucs.values() if v is not None]
    return {"macro_auc": round(float(np.mean(vals)), 3), "min_auc": round(float(np.min(vals)), 3)}


def rounded(aucs: dict) -> dict:
    """Each finding's AUC to 3 decimals (None stays None)."""
    return {k: (round(v, 3) if v is not None else None) for k, v in aucs.items()}


def fit_probe(x: np.ndarray, y: np.ndarray, l2: float):
    """Ridge logistic regression (LBFGS; penalty ``l2`` times the squared weights) of ``y`` on the
    features ``x`` standardised by their mean and spread over all rows, fitted on the rows with a label
    (``y >= 0``); returns the scorer: features -> logits (numpy)."""
    known = y >= 0
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xt = torch.tensor((x[known] - mu) / sd, dtype=torch.float32)
    yt = torch.tensor(y[known], dtype=torch.float32)
    w = torch.zeros(xt.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(xt @ w + b, yt) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)

    def score(xv: np.ndarray) -> np.ndarray:
        xv_t = torch.tensor((xv - mu) / sd, dtype=torch.float32)
        return (xv_t @ w + b).detach().numpy()

    return score


def probe_auc(x: np.ndarray, y: np.ndarray, xv: np.ndarray, yv: np.ndarray, l2: float) -> float | None:
    """The validation AUC of ``fit_probe`` (None without positives and negatives on both sides)."""
    known, known_v = y >= 0, yv >= 0
    if not (0 < y[known].sum() < known.sum() and 0 < yv[known_v].sum() < known_v.sum()):
        return None
    return float(roc_auc(yv[known_v], fit_probe(x, y, l2)(xv[known_v])))


def cardiac_probe(x: np.ndarray, labels: np.ndarray, xv: np.ndarray, labels_v: np.ndarray, l2: float) -> dict:
    """Each cardiac finding's validation AUC of ``probe_auc`` fitted on features ``x`` of the training
    phantoms and scored on ``xv``; ``labels`` / ``labels_v`` hold the cardiac findings' columns, in
    ``CARDIAC_IDS`` order."""
    from hyperct.phantom.cardiac import CARDIAC_IDS

    return rounded(
        {fid: probe_auc(x, labels[:, k], xv, labels_v[:, k], l2) for k, fid in enumerate(CARDIAC_IDS)}
    )


def heart_probe(x: np.ndarray, xv: np.ndarray, train, valid, l2: float) -> dict:
    """How much of the heart's geometry the mean CLS carries, and what that geometry gives the cardiac
    findings: ridge regression of the standardised heart numbers (``hyperct.training.heart_geometry``)
    on the mean CLS (R2 on the validation phantoms), and, with no backbone at all, the logistic probe
    of each cardiac finding on the true heart numbers (the ceiling of a readout of the geometry)."""
    from hyperct.phantom.cardiac import CARDIAC_IDS
    from hyperct.training.heart_geometry import mean_r2, r2_scores, ridge_fit, standardised_hearts

    h, hv = standardised_hearts(train), standardised_hearts(valid)
    w, b, lam = ridge_fit(x, h)
    r2 = r2_scores(xv @ w + b, hv)
    cols = [catalogue().ids.index(fid) for fid in CARDIAC_IDS]
    return {
        "mean_cls_r2": r2,
        "mean_cls_mean_r2": mean_r2(r2, digits=3),
        "ridge": lam,
        "true_geometry_probe_auc": cardiac_probe(
            h, np.asarray(train.labels)[:, cols], hv, np.asarray(valid.labels)[:, cols], l2
        ),
    }


def station_probe(x: np.ndarray, xv: np.ndarray, train, valid, l2: float) -> dict:
    """How much of the soft tissue near each lymph-node station the mean CLS carries (ridge regression
    of each station's total over the 55 images, ``hyperct.training.station_tissue``; R2 on the validation
    phantoms), and what those true totals give lymphadenopathy with no backbone at all (the ceiling of
    a linear read-out of them)."""
    from hyperct.training.heart_geometry import mean_r2, r2_scores, ridge_fit
    from hyperct.training.station_tissue import STATION_FIELDS

    s = np.stack([train.station_tissue(i).sum(axis=0) for i in range(len(train))])
    sv = np.stack([valid.station_tissue(i).sum(axis=0) for i in range(len(valid))])
    mu, sd = s.mean(0), s.std(0) + 1e-6
    s, sv = (s - mu) / sd, (sv - mu) / sd
    w, b, lam = ridge_fit(x, s)
    r2 = r2_scores(xv @ w + b, sv, STATION_FIELDS)
    k = catalogue().ids.index("lymphadenopathy")
    return {
        "mean_cls_r2": r2,
        "mean_cls_mean_r2": mean_r2(r2, digits=3),
        "ridge": lam,
        "true_station_tissue_probe_auc_lymphadenopathy": rounded(
            {"lymphadenopathy": probe_auc(s, train.labels[:, k], sv, valid.labels[:, k], l2)}
        )["lymphadenopathy"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--backbone", required=True, help="DINOv3 backbone folder (config.json + model.safetensors)"
    )
    ap.add_argument("--train", type=int, default=800, help="training phantoms (seeds 100000..)")
    ap.add_argument("--valid", type=int, default=200, help="validation phantoms (seeds 200000..)")
    ap.add_argument("--matrix", type=int, default=192)
    ap.add_argument("--cache", default="cache/hyperct-demo", help="preprocessing cache (phantoms are reused)")
    ap.add_argument("--l2", type=float, default=1e-2)
    ap.add_argument("--workers", type=int, default=1, help="processes generating missing phantoms")
    ap.add_argument("--train-seed", type=int, default=100000, help="first training seed")
    ap.add_argument("--valid-seed", type=int, default=200000, help="first validation seed")
    ap.add_argument(
        "--stations",
        action="store_true",
        help="also the lymph-node-station tissue the mean CLS carries (station_probe; ~0.3 s a phantom once)",
    )
    ap.add_argument("--out")
    args = ap.parse_args()

    t0 = time.time()
    backbone, train, valid = probe_data(args)
    t_data = time.time() - t0
    ft, fv = pooled_features(backbone, train), pooled_features(backbone, valid)
    ids = catalogue().ids
    result: dict = {
        "benchmark": "linear_probe_of_pooled_backbone_features",
        "backbone": str(args.backbone),
        "train_phantoms": args.train,
        "valid_phantoms": args.valid,
        "train_seeds": [args.train_seed, args.train_seed + args.train - 1],
        "valid_seeds": [args.valid_seed, args.valid_seed + args.valid - 1],
        "matrix": args.matrix,
        "l2": args.l2,
        "poolings": {},
    }
    for name, sl in POOLINGS.items():
        x, xv = ft[:, sl].reshape(len(ft), -1), fv[:, sl].reshape(len(fv), -1)
        aucs = {
            fid: probe_auc(x, train.labels[:, k], xv, valid.labels[:, k], args.l2)
            for k, fid in enumerate(ids)
        }
        result["poolings"][name] = {
            **summary(aucs),
            "per_finding": rounded(aucs),
        }
    result["heart"] = heart_probe(ft[:, 0], fv[:, 0], train, valid, args.l2)
    if args.stations:
        result["stations"] = station_probe(ft[:, 0], fv[:, 0], train, valid, args.l2)
    mc = result["poolings"]["mean_cls"]
    result["gate"] = {
        "rule": "mean_cls macro >= 0.92 and every finding >= 0.80 (issue 18)",
        "met": bool(mc["macro_auc"] >= 0.92 and mc["min_auc"] >= 0.80),
    }
    result["seconds_data"] = round(t_data, 1)
    result["seconds"] = round(time.time() - t0, 1)
    emit_json(result, args.out)


if __name__ == "__main__":
    main()
