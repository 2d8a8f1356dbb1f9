"""Is the heart's geometry in the model's input? A small 3-D CNN reads it from the whole volume.

    python benchmarks/heart_cnn_oracle.py [--arch volume|image_mean] [--bag-min N] [--slice-weight W] [--train 800]
        [--valid 200] [--epochs 24] [--eval-every 4] [--cache cache/hyperct-demo] [--out FILE]

The seven cardiac findings are thresholds of echo quantities the phantom renders as the heart's
numbers (``HeartShape``: chamber sizes, wall, vessel calibres; blood 38 HU against myocardium 52 HU,
so the chambers show faintly, as in non-contrast CT). A logistic probe on the nine TRUE numbers
separates every cardiac finding at 0.97-1.00; the best stage-1 backbone's mean CLS recovers the
numbers with R2 0.27 and the findings at 0.69-0.94 (issue 18, the model card). Two causes would
look the same: the numbers are not measurable from the rendered, resampled, 8-bit-cached volume
the model reads (then no model on this input can reach the true-geometry ceiling, and the
target of every cardiac finding >= 0.75 asks more of the phantom than of the model), or they are
and the ViT's mean CLS does not carry them.

This script trains, from scratch, a small 3-D CNN on exactly the model's input volume (the probe's
phantoms: ``probe_backbone.probe_datasets``, model-grid HU 165 x 144 x 144 from the cache),
averaged to 55 x 72 x 72 (each RGB image's 3 slices, 2 x 2 pixels) and given as two channels (HU /
1000 and a soft-tissue ramp around the blood / myocardium contrast). It regresses the nine
standardised heart numbers (``hyperct.training.heart_geometry``) and, beside them, a logit per
cardiac finding (BCE on the labelled ones). Reported on the validation phantoms every
``--eval-every`` epochs: R2 of each number, the AUC of each finding from the CNN's own logit, and
the AUC of a logistic probe (``probe_backbone.probe_auc``) on the CNN's predicted numbers (the same
readout as the true-geometry ceiling). Baseline that ignores the heart (``body_baseline``): the same
logistic probe on the body's size alone (voxel counts of body, lungs and soft tissue), since the
generator scales the heart with the body surface area.

``--arch``: ``volume`` (default), a 3-D CNN over the whole volume (context across images);
``image_mean``, HyperCT's way of reading a volume with a CNN in place of the ViT: each image alone
to a feature vector, the MEAN over the 55 images, one linear read-out. ``--bag-min N`` (image_mean):
train on the mean over a random bag of N..55 images of each volume against the whole heart's numbers,
as stage 1's heart objective does (``optim.heart_loss_weight`` on bags of ``optim.bag_min``..55
images); evaluation always reads all 55. ``--slice-weight W`` (image_mean): add stage 1's per-image heart
objective (``hyperct.training.heart_slices``: each image's feature regresses that image's share of
each chamber, the myocardium, the heart, the PA and the IVC), right for any bag.

Reading: a CNN well above the mean CLS (R2 >> 0.27, findings >> 0.75) says the geometry is in the
input and the backbone is what fails; one near the body baseline says the rendering caps the
cardiac findings. ``image_mean`` near ``volume`` says HyperCT's mean over per-image features can
carry the geometry; ``--bag-min 8`` well below ``image_mean`` on all 55 says stage 1's random bags
are what keeps its heart objective from teaching it; ``--slice-weight`` above the same run without it says
per-image targets teach the mean more of the whole heart. Prints JSON.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import emit_json  # noqa: E402
from probe_backbone import cardiac_probe, probe_datasets  # noqa: E402

from hyperct.findings import catalogue  # noqa: E402
from hyperct.phantom.cardiac import CARDIAC_IDS  # noqa: E402
from hyperct.preprocess import N_IMAGES  # noqa: E402
from hyperct.training.heart_geometry import HEART_FIELDS, mean_r2, r2_scores, standardised_hearts  # noqa: E402
from hyperct.training.heart_slices import SLICE_FIELDS, standardised_slices  # noqa: E402
from hyperct.training.metrics import roc_auc  # noqa: E402
from hyperct.training.teacher import image_cnn, image_features, reduced_volume  # noqa: E402


def body_size(hu: np.ndarray) -> np.ndarray:
    """(3,) voxel counts (thousands) of one model-grid volume: denser than -500 HU (the body), below
    -500 HU (lungs and the air around the body), and soft tissue (-100..100 HU)."""
    return (
        np.array([(hu > -500).sum(), (hu < -500).sum(), ((hu > -100) & (hu < 100)).sum()], dtype=np.float64)
        / 1000.0
    )


class HeartCNN(nn.Module):
    """(N, 2, 55, 72, 72) -> (N, n_out): four 3x3x3 conv blocks (BatchNorm, ReLU; strides (1,2,2),
    2, 2, 2), global mean and max pooling, one linear read-out."""

    def __init__(self, n_out: int, width: int = 16):
        super().__init__()
        chans = [2, width, 2 * width, 4 * width, 4 * width]
        strides = [(1, 2, 2), 2, 2, 2]
        layers: list[nn.Module] = []
        for a, b, s in zip(chans[:-1], chans[1:], strides):
            layers += [nn.Conv3d(a, b, 3, stride=s, padding=1, bias=False), nn.BatchNorm3d(b), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2 * chans[-1], n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return self.head(torch.cat([f.mean(dim=(2, 3, 4)), f.amax(dim=(2, 3, 4))], dim=1))


class ImageMeanCNN(nn.Module):
    """HyperCT's way of reading a volume, with a CNN for the ViT: (N, 2, 55, 72, 72) -> (N, n_out).
    Each of the 55 images alone through four 3x3 conv blocks (BatchNorm, ReLU, stride 2), its
    feature the mean and maximum over its pixels (the image's "CLS"), the MEAN of those over the
    55 images, one linear read-out (HyperCT's shared head on the mean CLS)."""

    def __init__(self, n_out: int, width: int = 16, n_slices: int = 0):
        super().__init__()
        self.features = image_cnn(width)  # (hyperct.training.teacher: the stage-1 teacher's network)
        self.head = nn.Linear(8 * width, n_out)
        # the per-image heart objective's head on each image's feature (``n_slices`` shares), if any
        self.slices = nn.Linear(8 * width, n_slices) if n_slices else None

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 2, Z, H, W) -> (N, Z, 2 * 4 * width): each image's feature, computed from it alone."""
        return image_features(self.features, x)

    def forward(self, x: torch.Tensor, bags: torch.Tensor | None = None) -> torch.Tensor:
        """``bags`` (N, Z) bool: average only those images of each volume (stage 1's random bags);
        None: all of them (how HyperCT reads a volume)."""
        return self.read(self.image_features(x), bags)

    def read(self, f: torch.Tensor, bags: torch.Tensor | None = None) -> torch.Tensor:
        """The read-out of ``image_features`` (N, Z, F): on their mean over all images, or over ``bags``."""
        if bags is None:
            return self.head(f.mean(dim=1))
        w = bags.to(f.dtype).unsqueeze(-1)
        return self.head((f * w).sum(dim=1) / w.sum(dim=1))


def random_bags(n: int, images: int, size_min: int, size_max: int, rng: np.random.Generator) -> torch.Tensor:
    """(n, images) bool: for each volume a random subset of ``size_min`` .. ``size_max`` of its
    images, uniformly (stage 1's bag objective without its positive-aware draw)."""
    out = np.zeros((n, images), dtype=bool)
    for row in out:
        row[rng.choice(images, size=int(rng.integers(size_min, size_max + 1)), replace=False)] = True
    return torch.from_numpy(out)


ARCHITECTURES = {"volume": HeartCNN, "image_mean": ImageMeanCNN}


def masked_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean BCE over the labelled entries (labels 0 / 1; -1 = missing, ignored); 0 when none."""
    known = labels >= 0
    if not known.any():
        return logits.sum() * 0.0
    return nn.functional.binary_cross_entropy_with_logits(logits[known], labels[known].float())


def shifted(x: torch.Tensor, rng: np.random.Generator, most: int = 3) -> torch.Tensor:
    """``x`` (N, C, Z, Y, X) rolled by a random in-plane shift of up to ``most`` pixels (no flips: a
    mirrored heart would swap its chambers' sides)."""
    dy, dx = (int(v) for v in rng.integers(-most, most + 1, size=2))
    return torch.roll(x, shifts=(dy, dx), dims=(3, 4))


def load(ds, cardiac_cols: list[int]):
    """(volumes (N, 2, 55, 72, 72) float16, heart numbers (N, 9), cardiac labels (N, 7), body size
    (N, 3)) of every phantom of ``ds``."""
    vols, body = [], []
    for i in range(len(ds)):
        hu = np.asarray(ds.model_hu(i), dtype=np.float32)
        vols.append(torch.from_numpy(reduced_volume(hu)).half())
        body.append(body_size(hu))
    labels = np.asarray(ds.labels)[:, cardiac_cols]
    return torch.stack(vols), standardised_hearts(ds), labels, np.stack(body)


def finding_aucs(scores: np.ndarray, labels: np.ndarray, ids=CARDIAC_IDS) -> dict:
    """Each finding's AUC (``ids``, default the cardiac ones) of column k of ``scores`` against column k
    of ``labels`` (-1 ignored; None without positives or negatives), to 3 decimals."""
    out = {}
    for k, fid in enumerate(ids):
        y = labels[:, k]
        known = y >= 0
        both = 0 < y[known].sum() < known.sum()
        out[fid] = round(float(roc_auc(y[known], scores[known, k])), 3) if both else None
    return out


def report(pred: np.ndarray, pred_v: np.ndarray, hearts, hearts_v, labels, labels_v, l2: float) -> dict:
    """A reader's outputs (N, 9 numbers + 7 logits) on the training and validation phantoms ->
    ``valid``: validation R2 of each heart number, each cardiac finding's AUC from the reader's logit
    and from a logistic probe on the predicted numbers (fitted on the training phantoms'
    predictions); ``train_mean_r2``: the mean R2 on the training phantoms."""
    nh = len(HEART_FIELDS)
    r2 = r2_scores(pred_v[:, :nh], hearts_v)
    logit_auc = finding_aucs(pred_v[:, nh:], labels_v)
    valid = {
        "r2": r2,
        "mean_r2": mean_r2(r2, digits=3),
        "logit_auc": logit_auc,
        "logit_macro": round(float(np.mean([v for v in logit_auc.values() if v is not None])), 3),
        "numbers_probe_auc": cardiac_probe(pred[:, :nh], labels, pred_v[:, :nh], labels_v, l2),
    }
    return {"valid": valid, "train_mean_r2": mean_r2(r2_scores(pred[:, :nh], hearts), digits=3)}


def reader_loss(out: torch.Tensor, hearts: torch.Tensor, labels: torch.Tensor, label_weight: float = 1.0):
    """MSE of the 9 predicted heart numbers + ``label_weight`` x BCE of the 7 logits on the labelled."""
    nh = len(HEART_FIELDS)
    return nn.functional.mse_loss(out[:, :nh], hearts) + label_weight * masked_bce(out[:, nh:], labels)


def fit(
    model, batches, opt, sched, *, epochs, eval_every, score, label_weight=1.0, t0=None, loss_of=None
) -> list:
    """Train a reader: each epoch, every (output, heart numbers, labels[, extra loss]) that ``batches()``
    yields is one step on ``reader_loss`` plus the extra loss (``sched`` stepped after each, when
    given); every ``eval_every`` epochs and at the end ``score()`` (a ``report``) goes into that
    epoch's row. ``loss_of``: the step's loss from what ``batches()`` yields, in place of that.
    Returns the rows (also printed to stderr)."""
    t0 = time.time() if t0 is None else t0
    if loss_of is None:

        def loss_of(out, hearts, labels, *extra):
            return reader_loss(out, hearts, labels, label_weight) + sum(extra)

    curve = []
    for epoch in range(1, epochs + 1):
        losses = []
        for item in batches():
            loss = loss_of(*item)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            losses.append(loss.item())
        row = {
            "epoch": epoch,
            "train_loss": round(float(np.mean(losses)), 4),
            "seconds": round(time.time() - t0, 1),
        }
        if epoch % eval_every == 0 or epoch == epochs:
            row.update(score())
        print(row, file=sys.stderr)
        curve.append(row)
    return curve


@torch.no_grad()
def predict(model, vols: torch.Tensor, batch: int = 16) -> np.ndarray:
    model.eval()
    out = [model(vols[a : a + batch].float()) for a in range(0, len(vols), batch)]
    model.train()
    return torch.cat(out).numpy()


def cnn_arguments(description: str, epochs: int, eval_every: int) -> argparse.ArgumentParser:
    """The arguments the CNN oracles share: the probe's phantoms and the reader's training."""
    ap = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--cache", default="cache/hyperct-demo")
    ap.add_argument("--matrix", type=int, default=192)
    ap.add_argument("--train", type=int, default=800)
    ap.add_argument("--valid", type=int, default=200)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=epochs)
    ap.add_argument("--eval-every", type=int, default=eval_every)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--width", type=int, default=16)
    return ap


def main() -> None:
    ap = cnn_arguments(__doc__, epochs=24, eval_every=4)
    ap.add_argument(
        "--arch",
        choices=sorted(ARCHITECTURES),
        default="volume",
        help="volume: a 3-D CNN over the whole volume; image_mean: each image alone, features "
        "averaged over the 55 images (how HyperCT reads its backbone)",
    )
    ap.add_argument(
        "--bag-min",
        type=int,
        default=0,
        help="image_mean only: train on the mean over a random bag of BAG_MIN..55 images of each "
        "volume against the whole heart's numbers (stage 1's heart objective); 0: all 55",
    )
    ap.add_argument(
        "--slice-weight",
        type=float,
        default=0.0,
        help="image_mean only: add stage 1's per-image heart objective at this weight (a head on each "
        "image's feature regresses its share of each heart structure, hyperct.training.heart_slices)",
    )
    ap.add_argument("--label-weight", type=float, default=1.0, help="weight of the findings' BCE")
    ap.add_argument("--l2", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out")
    args = ap.parse_args()
    if (args.bag_min or args.slice_weight) and args.arch != "image_mean":
        ap.error("--bag-min and --slice-weight need --arch image_mean")
    if args.slice_weight < 0:
        ap.error(f"--slice-weight must be >= 0, got {args.slice_weight}")
    if not 0 <= args.bag_min <= N_IMAGES:
        ap.error(f"--bag-min must be 0 (all images) or 1..{N_IMAGES}, got {args.bag_min}")
    t0 = time.time()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    train, valid = probe_datasets(args)
    ids = catalogue().ids
    cols = [ids.index(f) for f in CARDIAC_IDS]
    xt, ht, yt, bt = load(train, cols)
    xv, hv, yv, bv = load(valid, cols)
    print(f"loaded {len(xt)} + {len(xv)} volumes in {time.time() - t0:.0f} s", file=sys.stderr)
    body = cardiac_probe(bt, yt, bv, yv, args.l2)
    n_out = len(HEART_FIELDS) + len(CARDIAC_IDS)
    if args.slice_weight:
        model = ImageMeanCNN(n_out, args.width, n_slices=len(SLICE_FIELDS))
        st = torch.from_numpy(
            np.stack([standardised_slices(train.heart_slices(i)) for i in range(len(train))])
        )
        print(f"per-image heart shares of {len(st)} phantoms at {time.time() - t0:.0f} s", file=sys.stderr)
    else:
        model = ARCHITECTURES[args.arch](n_out, args.width)
    steps_per_epoch = len(xt) // args.batch
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.1
    )
    h_t, y_t = torch.from_numpy(ht), torch.from_numpy(yt)

    def batches():
        order = rng.permutation(len(xt))
        for s in range(steps_per_epoch):
            idx = torch.from_numpy(order[s * args.batch : (s + 1) * args.batch])
            x = shifted(xt[idx].float(), rng)
            bags = random_bags(len(idx), x.shape[2], args.bag_min, x.shape[2], rng) if args.bag_min else None
            if not args.slice_weight:
                yield model(x, bags) if bags is not None else model(x), h_t[idx], y_t[idx]
                continue
            f = model.image_features(x)
            shares = nn.functional.mse_loss(model.slices(f), st[idx])  # every image, bag or not
            yield model.read(f, bags), h_t[idx], y_t[idx], args.slice_weight * shares

    curve = fit(
        model,
        batches,
        opt,
        sched,
        epochs=args.epochs,
        eval_every=args.eval_every,
        score=lambda: report(predict(model, xt), predict(model, xv), ht, hv, yt, yv, args.l2),
        label_weight=args.label_weight,
        t0=t0,
    )
    final = curve[-1]["valid"]
    true_geometry = cardiac_probe(ht, yt, hv, yv, args.l2)
    emit_json(
        {
            "benchmark": "heart_cnn_oracle",
            "train_phantoms": len(xt),
            "valid_phantoms": len(xv),
            "epochs": args.epochs,
            "lr": args.lr,
            "width": args.width,
            "arch": args.arch,
            "bag_min": args.bag_min,
            "slice_weight": args.slice_weight,
            "seed": args.seed,
            "torch_threads": torch.get_num_threads(),
            "curve": curve,
            "final": final,
            "true_geometry_probe_auc": true_geometry,
            "body_baseline_probe_auc": body,
            "seconds": round(time.time() - t0, 1),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
