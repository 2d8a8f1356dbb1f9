"""Are the heart's numbers in a frozen backbone's patch tokens, where its mean CLS does not carry them?

    python benchmarks/heart_token_probe.py --backbone progress/demo-backbone-v1w-pair-heart \
        [--train 800] [--valid 200] [--epochs 40] [--out FILE]

The best stage-1 backbone's mean CLS recovers the phantom's heart numbers (``HeartShape``, nine
numbers) with R2 0.27 by ridge regression, and a 3-D CNN trained on the same input volumes with
0.76 (``heart_cnn_oracle.py``). Between the two: do the backbone's final patch tokens hold the
geometry, in a form a linear map of their mean misses? This probe reads every final patch token of
every image through a small MLP (the token's 96 features plus where it is: row, column, image),
averages the result over all 55 x 81 tokens of the volume and maps that linearly to the nine
standardised numbers and a logit per cardiac finding (as ``heart_cnn_oracle``: MSE + BCE on the
labelled findings), trained on the frozen tokens of the probe's training phantoms; reported on its
validation phantoms: R2 per number, each finding's AUC (its logit, and a logistic probe on the
predicted numbers), beside the same two read from ridge regression on the mean CLS and the mean
patch token (linear, the gate probe's kind of readout).

Reading: the token MLP far above the linear readouts says the tokens hold the heart and what the
frozen CLS passes on is what fails (a readout HyperCT does not have: its head is linear on the mean
CLS); near them says the backbone's features themselves lack it. Prints JSON.
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
from heart_cnn_oracle import fit, predict, report  # noqa: E402
from probe_attention_pooling import instance_moments, token_features  # noqa: E402
from probe_backbone import cardiac_probe, probe_data  # noqa: E402

from hyperct.findings import catalogue  # noqa: E402
from hyperct.phantom.cardiac import CARDIAC_IDS  # noqa: E402
from hyperct.preprocess import IMAGE_SIZE  # noqa: E402
from hyperct.training.heart_geometry import HEART_FIELDS, mean_r2, r2_scores, ridge_fit, standardised_hearts  # noqa: E402


def with_positions(tokens: torch.Tensor, grid: int) -> torch.Tensor:
    """(N, I * grid * grid, D) tokens of I images -> (N, I * grid^2, D + 3): each token's row, column
    and image index, each scaled to [0, 1], appended."""
    n, t, _ = tokens.shape
    images = t // (grid * grid)
    z, r, c = torch.meshgrid(
        torch.linspace(0, 1, images), torch.linspace(0, 1, grid), torch.linspace(0, 1, grid), indexing="ij"
    )
    where = torch.stack([r, c, z], dim=-1).reshape(1, t, 3).expand(n, t, 3).to(tokens.dtype)
    return torch.cat([tokens, where], dim=-1)


class TokenMLPMean(nn.Module):
    """(B, T, D) -> (B, n_out): a per-token MLP (standardised input, two ReLU layers), the mean over
    the tokens, one linear read-out."""

    def __init__(self, dim: int, n_out: int, hidden: int = 128):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("sd", torch.ones(dim))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mlp((x - self.mean) / self.sd).mean(dim=1))


def linear_readout(x: np.ndarray, xv: np.ndarray, h, hv, yt, yv, l2: float) -> dict:
    """Ridge regression of the heart numbers on pooled features ``x``: validation R2 and the numbers
    probe (the readout kind of the gate's probe)."""
    w, b, _ = ridge_fit(x, h)
    pt, pv = x @ w + b, xv @ w + b
    r2 = r2_scores(pv, hv)
    return {
        "r2": r2,
        "mean_r2": mean_r2(r2, digits=3),
        "numbers_probe_auc": cardiac_probe(pt, yt, pv, yv, l2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", required=True)
    ap.add_argument("--cache", default="cache/hyperct-demo")
    ap.add_argument("--matrix", type=int, default=192)
    ap.add_argument("--train", type=int, default=800)
    ap.add_argument("--valid", type=int, default=200)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--l2", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out")
    args = ap.parse_args()
    t0 = time.time()
    torch.manual_seed(args.seed)
    backbone, train, valid = probe_data(args)
    grid = IMAGE_SIZE // int(backbone.config.patch_size)
    ids = catalogue().ids
    cols = [ids.index(f) for f in CARDIAC_IDS]
    feats = {
        name: token_features(backbone, ds, ["patch", "cls"])
        for name, ds in (("train", train), ("valid", valid))
    }
    t_feat = time.time() - t0
    h, hv = standardised_hearts(train), standardised_hearts(valid)
    yt, yv = np.asarray(train.labels)[:, cols], np.asarray(valid.labels)[:, cols]
    linear = {
        pool: linear_readout(
            feats["train"][kind].float().mean(dim=1).numpy(),
            feats["valid"][kind].float().mean(dim=1).numpy(),
            h,
            hv,
            yt,
            yv,
            args.l2,
        )
        for pool, kind in (("mean_cls", "cls"), ("mean_patch", "patch"))
    }
    x, xv = (with_positions(feats[s]["patch"], grid) for s in ("train", "valid"))
    del feats
    model = TokenMLPMean(x.shape[-1], len(HEART_FIELDS) + len(CARDIAC_IDS))
    model.mean, model.sd = instance_moments(x)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    h_t, y_t = torch.from_numpy(h), torch.from_numpy(yt)
    rng = np.random.default_rng(args.seed)

    def batches():
        order = rng.permutation(len(x))
        for s in range(0, len(x), args.batch):
            idx = torch.from_numpy(order[s : s + args.batch])
            yield model(x[idx].float()), h_t[idx], y_t[idx]

    curve = fit(
        model,
        batches,
        opt,
        None,
        epochs=args.epochs,
        eval_every=args.eval_every,
        score=lambda: report(predict(model, x), predict(model, xv), h, hv, yt, yv, args.l2),
        t0=t0,
    )
    emit_json(
        {
            "benchmark": "heart_token_probe",
            "backbone": args.backbone,
            "train_phantoms": len(x),
            "valid_phantoms": len(xv),
            "epochs": args.epochs,
            "lr": args.lr,
            "seed": args.seed,
            "linear": linear,
            "token_mlp_mean": curve[-1]["valid"],
            "curve": curve,
            "seconds_features": round(t_feat, 1),
            "seconds": round(time.time() - t0, 1),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
