"""How far HyperCT's way of reading a volume can carry all 25 findings, with a CNN learning it.

    python benchmarks/reading_cnn_oracle.py [--train 800] [--valid 200] [--epochs 20] [--width 16]
        [--image-weight 1] [--slice-weight 1] [--channels both|hu|w400] [--stem conv|patch|convpatch]
        [--cache cache/hyperct-demo] [--out FILE]

The gate of issue 18 asks the frozen backbone's mean CLS (each image alone to a feature, the mean
over the 55 images, a linear read-out) for every finding at >= 0.80; the best ViT backbone reaches
a probe macro of 0.852 with six findings below 0.80 (model card). Two causes would look alike: that
reading cannot carry those findings from this input (then no backbone can pass the gate), or the ViT
has not learned them (then a learner that does would show it, and could teach the ViT).

This script trains, from scratch and in minutes, ``heart_cnn_oracle.ImageMeanCNN`` (four 3x3 conv
blocks per image on the probe phantoms' model-grid volumes averaged to 55 images of 72 x 72, two
channels) with stage 1's kinds of supervision: a linear head on the mean feature over all 55 images
for the 25 findings (BCE, positives weighted by each finding's negatives / positives, at most 10), a
linear head on each image's feature for the findings that image holds (its token masks, every
finding that has masks), and each image's share of each heart structure
(``hyperct.training.heart_slices``). Reported on the validation phantoms: each finding's AUC from the
mean-feature head, and from the gate's own read-out (``probe_backbone.probe_auc``: a logistic probe on
the mean feature, fitted on the training phantoms). Baseline that ignores the image: the same probe
on the body's size (``heart_cnn_oracle.body_size``).

Reading: findings well above the ViT probe here are learnable through HyperCT's reading from this
input (the ViT is what lacks them, and this CNN's per-image features are a teacher for it); findings
near the ViT's value here too are capped by the reading or the input (the nodule's blob-filter
oracle: 0.74-0.76 on one image). The 2 x 2 averaging halves the nodule's size in pixels. Prints JSON.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import emit_json  # noqa: E402
from heart_cnn_oracle import ImageMeanCNN, body_size, cnn_arguments, finding_aucs, fit, shifted  # noqa: E402
from probe_backbone import probe_auc, probe_datasets, rounded, summary  # noqa: E402

from hyperct.findings import catalogue  # noqa: E402
from hyperct.training.heart_slices import SLICE_FIELDS, standardised_slices  # noqa: E402
from hyperct.training.teacher import WIDTH, reduced_volume, save_teacher  # noqa: E402

MAX_POS_WEIGHT = 10.0


class ReadingCNN(ImageMeanCNN):
    """``ImageMeanCNN`` with 25 finding logits on the mean feature, plus per-image heads: 25 finding
    logits and the heart shares on each image's own feature."""

    def __init__(self, n_findings: int, width: int, stem: str = "conv"):
        super().__init__(n_findings, width, n_slices=len(SLICE_FIELDS))
        self.images = nn.Linear(self.head.in_features, n_findings)
        if stem != "conv":
            self.features = token_grid_cnn(width, stem)


def token_grid_cnn(width: int, stem: str) -> nn.Sequential:
    """The ViT's first step in a CNN: the 72 x 72 image to a 9 x 9 token grid (the ViT's 16 x 16
    patches of 144 x 144), then three 3 x 3 conv blocks on the grid (BatchNorm, ReLU) in place of
    the transformer layers; 4 * width channels out, as ``image_cnn``. ``stem`` "patch": a LINEAR
    embedding of each 8 x 8 patch (the ViT's patch embedding); "convpatch": three stride-2 3 x 3 conv
    blocks to the same grid (a learned nonlinear embedding, the control). Whether what the LV
    findings need survives a linear patch embedding."""
    c = 4 * width
    if stem == "patch":
        layers: list[nn.Module] = [nn.Conv2d(2, c, 8, stride=8)]
    else:
        layers = []
        for a, b in zip([2, width, 2 * width], [width, 2 * width, c]):
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU()]
        layers.append(nn.Conv2d(c, c, 1))
    for _ in range(3):
        layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1, bias=False)]
    return nn.Sequential(*layers, nn.BatchNorm2d(c), nn.ReLU())


def image_labels(ds, i: int) -> np.ndarray:
    """(55, 25) int8: whether each model image holds a token of each finding (1) or not (0); ``main``
    sets -1 for the findings no training image holds a token of (labels of the whole volume only)."""
    tokens = ds.token_labels(i, 16)
    return tokens.any(axis=(1, 2)).astype(np.int8)


def load(ds):
    """Volumes (N, 2, 55, 72, 72) float16, labels (N, 25), per-image labels (N, 55, 25), heart shares
    (N, 55, 8) standardised, body size (N, 3) of every phantom of ``ds``."""
    vols, per_image, shares, body = [], [], [], []
    for i in range(len(ds)):
        hu = np.asarray(ds.model_hu(i), dtype=np.float32)
        vols.append(torch.from_numpy(reduced_volume(hu)).half())
        body.append(body_size(hu))
        per_image.append(image_labels(ds, i))
        shares.append(standardised_slices(ds.heart_slices(i)))
    return (
        torch.stack(vols),
        np.asarray(ds.labels, dtype=np.int8),
        np.stack(per_image),
        np.stack(shares).astype(np.float32),
        np.stack(body),
    )


def positive_weights(labels: np.ndarray) -> torch.Tensor:
    """(25,) each finding's negatives / positives among the labelled phantoms, clipped to 1..10."""
    pos = (labels == 1).sum(0)
    neg = (labels == 0).sum(0)
    return torch.tensor(np.clip(neg / np.maximum(pos, 1), 1.0, MAX_POS_WEIGHT), dtype=torch.float32)


def weighted_bce(logits: torch.Tensor, labels: torch.Tensor, pos_weight: torch.Tensor) -> torch.Tensor:
    """BCE over the labelled entries (labels >= 0), positives weighted per finding (last axis)."""
    known = labels >= 0
    if not known.any():
        return logits.sum() * 0.0
    w = torch.where(labels == 1, pos_weight.expand_as(labels), torch.ones_like(logits))
    loss = nn.functional.binary_cross_entropy_with_logits(
        logits, labels.clamp(min=0).float(), reduction="none"
    )
    return (loss * w)[known].sum() / w[known].sum()


@torch.no_grad()
def mean_features(model: ReadingCNN, vols: torch.Tensor, batch: int = 8) -> np.ndarray:
    """(N, F): each volume's mean image feature over its 55 images (HyperCT's mean CLS)."""
    model.eval()
    out = [model.image_features(vols[a : a + batch].float()).mean(dim=1) for a in range(0, len(vols), batch)]
    model.train()
    return torch.cat(out).numpy()


def score(model, xt, yt, xv, yv, ids, l2: float) -> dict:
    """The mean-feature head's AUCs and the gate probe's AUCs on the validation phantoms."""
    ft, fv = mean_features(model, xt), mean_features(model, xv)
    with torch.no_grad():
        head = model.head(torch.from_numpy(fv)).numpy()
    heads = finding_aucs(head, yv, ids)
    probe = rounded({fid: probe_auc(ft, yt[:, k], fv, yv[:, k], l2) for k, fid in enumerate(ids)})
    return {
        "head": {**summary(heads), "per_finding": heads},
        "probe": {**summary(probe), "per_finding": probe},
    }


def main() -> None:
    ap = cnn_arguments(__doc__, epochs=20, eval_every=5)
    ap.add_argument("--image-weight", type=float, default=1.0, help="per-image findings' BCE")
    ap.add_argument("--slice-weight", type=float, default=1.0, help="per-image heart shares' MSE")
    ap.add_argument(
        "--channels",
        choices=("both", "hu", "w400"),
        default="both",
        help="hu: the soft-tissue ramp channel zeroed (what the CNN reads without the narrow window "
        "around the blood / myocardium contrast); w400: that channel made the demo ViT's soft-tissue "
        "window instead (W400 L40, hyperct.network.windows.DEMO_WINDOWS)",
    )
    ap.add_argument(
        "--stem",
        choices=("conv", "patch", "convpatch"),
        default="conv",
        help="patch: a linear embedding of the ViT's patches, then convs on its token grid; convpatch: "
        "conv blocks to that grid instead of the linear embedding, then the same (token_grid_cnn)",
    )
    ap.add_argument("--l2", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out")
    ap.add_argument(
        "--save",
        help="folder to keep the trained CNN's per-image feature extractor as a stage-1 teacher "
        "(hyperct.training.teacher; optim.teacher)",
    )
    args = ap.parse_args()
    if args.save and (args.width != WIDTH or args.channels != "both" or args.stem != "conv"):
        ap.error(f"--save keeps a stage-1 teacher: width {WIDTH}, both channels, the conv stem")
    for name in ("image_weight", "slice_weight"):
        if getattr(args, name) < 0:
            ap.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    t0 = time.time()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    ids = list(catalogue().ids)
    train, valid = probe_datasets(args)
    xt, yt, it, st, bt = load(train)
    xv, yv, _, _, bv = load(valid)
    if args.channels == "hu":
        xt[:, 1], xv[:, 1] = 0, 0
    elif args.channels == "w400":
        for x in (xt, xv):
            x[:, 1] = ((x[:, 0].float() * 1000.0 - 40.0) / 200.0).clamp(-1.0, 1.0).half()
    print(f"loaded {len(xt)} + {len(xv)} volumes in {time.time() - t0:.0f} s", file=sys.stderr)
    body = rounded({fid: probe_auc(bt, yt[:, k], bv, yv[:, k], args.l2) for k, fid in enumerate(ids)})
    # findings with masks: some image of some training phantom holds a token of them
    masked = it.reshape(-1, len(ids)).max(axis=0) > 0
    it = np.where(masked, it, -1).astype(np.int8)
    model = ReadingCNN(len(ids), args.width, args.stem)
    pw, pw_img = positive_weights(yt), positive_weights(it.reshape(-1, len(ids)))
    steps_per_epoch = len(xt) // args.batch
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.1
    )
    y_t, i_t, s_t = torch.from_numpy(yt), torch.from_numpy(it), torch.from_numpy(st)

    def batches():
        order = rng.permutation(len(xt))
        for s in range(steps_per_epoch):
            idx = torch.from_numpy(order[s * args.batch : (s + 1) * args.batch])
            f = model.image_features(shifted(xt[idx].float(), rng))
            loss = weighted_bce(model.head(f.mean(dim=1)), y_t[idx], pw)
            if args.image_weight:
                loss = loss + args.image_weight * weighted_bce(model.images(f), i_t[idx], pw_img)
            if args.slice_weight:
                loss = loss + args.slice_weight * nn.functional.mse_loss(model.slices(f), s_t[idx])
            yield (loss,)

    curve = fit(
        model,
        batches,
        opt,
        sched,
        epochs=args.epochs,
        eval_every=args.eval_every,
        score=lambda: score(model, xt, yt, xv, yv, ids, args.l2),
        t0=t0,
        loss_of=lambda loss: loss,
    )
    if args.save:
        save_teacher(model.features, xt, args.save, {"benchmark": "reading_cnn_oracle", **vars(args)})
    emit_json(
        {
            "benchmark": "reading_cnn_oracle",
            "train_phantoms": len(xt),
            "valid_phantoms": len(xv),
            "epochs": args.epochs,
            "lr": args.lr,
            "width": args.width,
            "image_weight": args.image_weight,
            "slice_weight": args.slice_weight,
            "channels": args.channels,
            "stem": args.stem,
            "findings_with_masks": [fid for fid, m in zip(ids, masked) if m],
            "seed": args.seed,
            "torch_threads": torch.get_num_threads(),
            "curve": curve,
            "final": curve[-1],
            "body_baseline_probe_auc": {**summary(body), "per_finding": body},
            "seconds": round(time.time() - t0, 1),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
