"""Can a small learned detector find a finding in what one ViT image sees, where stage 1 cannot?

    python benchmarks/nodule_cnn_oracle.py [--finding lung_nodule] [--train 800] [--valid 200]
        [--steps 1500] [--eval-every 500] [--split-negatives] [--rank-negatives K] [--blob-target W]
        [--mine-negatives P] [--blob-channel] [--eval-train N]
        [--cache cache/hyperct-demo] [--out FILE]

The hand-made blob filter (``nodule_blob_oracle.py``) finds the lung nodule within one RGB image at
AUC 0.74 while every stage-1 backbone's token head, scored as its maximum over a volume, stays at
~0.54 (issue 18, the model card). A fixed filter is no ceiling for a learned one. This script
trains a small CNN from scratch on exactly the ViT's inputs (single normalised 3-slice images,
144 x 144) to give one logit per 16 x 16 token for one finding (the stage-1 token labels), with
the stage-1 token loss and the token-max (multiple-instance) loss, balanced per class; each step
draws 8 phantoms of the probe's training set (seeds 100000..) and 4 images of each, half of them
holding the finding where the phantom has it. It reports, on the probe's validation phantoms
(seeds 200000..), the volume AUC of the detector's maximum over the 55 x 81 tokens (the phantom's
label), the token AUC, and which other findings that maximum fires on in volumes without the
finding (``look_alikes``), every ``--eval-every`` steps. ``--split-negatives``: the token loss
weighs the negatives that hold another finding as much as the rest (``optim.split_negatives``).
``--rank-negatives K``: adds a ranking loss (``rank_loss``): every positive token of the batch must
outscore each of the batch's K highest-scoring negative tokens, wherever they are; the volume maximum
needs the finding above every other token of every volume, which a per-token loss does not ask.
``--blob-target W``: a second read-out learns, per token, the hand-made blob filter's response
(``nodule_blob_oracle``: bright in every direction at nodule scale, within the image's 3 slices,
in the lungs; ``blob_tokens``), weighted W beside the other losses: the detector's features must
then encode what separates a nodule from vessels and lung textures, which its labels do not say.
``--mine-negatives P``: each step also scores P random phantoms on all 55 images and adds, of each,
the image holding its highest-scoring token outside the finding to the batch (``mine``): the tail a
volume maximum reads, which the losses rarely see in 4 random images of a phantom. ``--blob-channel``:
the blob filter's response per pixel (``blob_pixels``) is a fourth input channel, a fixed feature
beside the HU windows: can a learned detector that is given the filter do better than the filter?
``--eval-train N``: the same scores on the first N training phantoms (a detector that ranks the
phantoms it trained on and not new ones is short of examples, not of the right objective).

Reading: a detector well above the backbone's ~0.54 says the information is learnable from one
image and stage 1 is what fails (its patch embedding / capacity / objective); one at or below the
blob filter says the phantom's nodule is ambiguous against its vessels at this resolution, and a
gate of 0.80 on it asks for more than the input holds. Prints JSON.
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
from probe_backbone import probe_datasets  # noqa: E402
from probe_token_head import look_alikes_of  # noqa: E402

from hyperct.findings import catalogue  # noqa: E402
from hyperct.preprocess import N_IMAGES, model_grid_hu  # noqa: E402
from hyperct.training.metrics import roc_auc  # noqa: E402
from hyperct.training.pretrain import _ImageSampler, finding_loss, token_max_loss  # noqa: E402

PATCH = 16  # the demo ViT's token size: one detector logit per ViT token
BLOB_SCALE = 2.5  # the blob filter's scale (model-grid pixels) for --blob-target: its best one-image view


class TokenDetector(nn.Module):
    """(N, 3, H, W) images -> (N, H/16 * W/16) logits: five 3x3 conv layers (four of stride 2) and a
    1x1 read-out, ~80 M multiply-adds per 144 x 144 image (the demo ViT: ~88 M)."""

    def __init__(self, width: int = 32, aux: bool = False, blob_channel: bool = False):
        super().__init__()
        w = width
        # --blob-channel: the blob filter's response is a fourth input channel, computed from the
        # image itself (a fixed feature like the HU windows, not learned)
        self.blob_channel = blob_channel
        chans = [4 if blob_channel else 3, w * 3 // 4, w, w * 3 // 2, 2 * w, 2 * w]
        layers: list[nn.Module] = []
        for k, (a, b) in enumerate(zip(chans[:-1], chans[1:])):
            layers += [
                nn.Conv2d(a, b, 3, stride=1 if k == 0 else 2, padding=1),
                nn.GroupNorm(4, b),
                nn.GELU(),
            ]
        self.features = nn.Sequential(*layers)
        self.read = nn.Conv2d(chans[-1], 1, 1)
        # a second read-out (--blob-target), made after the first so that without it the
        # detector's initial weights stay what they were
        self.aux = nn.Conv2d(chans[-1], 1, 1) if aux else None

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if self.blob_channel:
            x = torch.cat([x, blob_pixels(x)], dim=1)
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.read(self._features(x)).flatten(1)

    def both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The finding's logits and the auxiliary read-out, (N, T) each."""
        f = self._features(x)
        return self.read(f).flatten(1), self.aux(f).flatten(1)


@torch.no_grad()
def blob_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """(n, 3, H, W) normalised images -> (n, 1, H, W): per pixel, log(1 + the blob response of
    ``nodule_blob_oracle.blob_3d`` on the image's 3 slices (HU again), the strongest of the 3), in
    the lungs (air around, the voxel itself denser than -700 HU); 0 elsewhere."""
    from nodule_blob_oracle import Z_FACTOR, blob_3d, dense_in_lungs

    n, _, h, w = pixels.shape
    hu = model_grid_hu(pixels.detach().float()).reshape(n, 3, h, w).numpy()
    out = np.zeros((n, h, w), dtype=np.float32)
    for i in range(n):
        where = dense_in_lungs(hu[i], (0, 5, 5))  # the air around within each slice
        if not where.any():
            continue
        full = np.zeros(hu[i].shape, dtype=np.float32)
        full[where] = blob_3d(hu[i], (Z_FACTOR, BLOB_SCALE, BLOB_SCALE), where, mode="nearest")
        out[i] = full.max(axis=0)
    return torch.from_numpy(np.log1p(out))[:, None].to(pixels.dtype)


def blob_tokens(pixels: torch.Tensor) -> torch.Tensor:
    """(n, 3, H, W) normalised images -> (n, T): per 16 x 16 token, the strongest of ``blob_pixels``
    in it."""
    return torch.nn.functional.max_pool2d(blob_pixels(pixels), PATCH).flatten(1)


def _chunks(pix: torch.Tensor, size: int = 28) -> list[torch.Tensor]:
    """A volume's images in forward passes of at most ``size``."""
    return [pix[a : a + size] for a in range(0, len(pix), size)]


def _held_elsewhere(t: torch.Tensor, k: int) -> torch.Tensor:
    """(n, T, 25) token labels -> (n, T, 1): the tokens that hold a finding other than ``k``."""
    return (t.sum(-1, keepdim=True) - t[..., k : k + 1]) > 0


def draw(sampler: _ImageSampler, ds, k: int, rng: np.random.Generator, phantoms: int, per: int):
    """A batch: ``phantoms`` random phantoms, ``per`` images of each, half of them holding finding
    ``k`` where the phantom has it. Returns pixels (n, 3, 144, 144), token labels (n, 81, 1) and
    the tokens that hold another finding (n, 81, 1)."""
    pix, tok, other = [], [], []
    for i in rng.choice(len(ds), size=phantoms, replace=False):
        grid = ds.token_labels(int(i), PATCH)[..., k]  # (55, G, G)
        pos = np.flatnonzero(grid.any(axis=(1, 2)))
        which = list(rng.choice(pos, size=min(per // 2, pos.size), replace=False)) if pos.size else []
        rest = np.setdiff1d(np.arange(N_IMAGES), which)
        which += list(rng.choice(rest, size=per - len(which), replace=False))
        p, t = sampler.images(int(i), np.sort(np.asarray(which)))
        pix.append(p)
        tok.append(t[..., k : k + 1])
        other.append(_held_elsewhere(t, k))
    return torch.cat(pix), torch.cat(tok), torch.cat(other)


@torch.no_grad()
def mine(model: TokenDetector, sampler: _ImageSampler, ds, k: int, rng: np.random.Generator, phantoms: int):
    """Hard negatives as a volume maximum sees them: ``phantoms`` random phantoms, each scored on all
    its 55 images, and of each the image holding its highest-scoring token that is not finding
    ``k`` (in a volume without the finding: the volume's maximum). Returns what ``draw`` returns,
    for those images."""
    pix, tok, other = [], [], []
    for i in rng.choice(len(ds), size=phantoms, replace=False):
        p, t = sampler.images(int(i), np.arange(N_IMAGES))
        lg = torch.cat([model(c) for c in _chunks(p)])
        lg = lg.masked_fill(t[..., k] > 0, float("-inf"))
        j = int(lg.amax(dim=1).argmax())
        pix.append(p[j : j + 1])
        tok.append(t[j : j + 1, :, k : k + 1])
        other.append(_held_elsewhere(t[j : j + 1], k))
    return torch.cat(pix), torch.cat(tok), torch.cat(other)


def _auc(y: np.ndarray, s: np.ndarray) -> float | None:
    """AUC to 3 decimals; None without both classes."""
    return round(float(roc_auc(y, s)), 3) if 0 < y.sum() < len(y) else None


@torch.no_grad()
def evaluate(model: TokenDetector, sampler: _ImageSampler, ds, k: int, n: int | None = None) -> dict:
    """Volume AUC of the maximum token logit (phantom labels, unlabelled left out), token AUC, and
    the other findings that maximum fires on in volumes without finding ``k``
    (``probe_token_head.look_alikes_of``); on the first ``n`` phantoms of ``ds`` (default all).
    With an auxiliary read-out (``--blob-target``) also its maximum's volume AUC
    (``aux_volume_max_auc``)."""
    model.eval()
    vol, aux_vol, labels, tok, tok_y = [], [], [], [], []
    for i in range(len(ds) if n is None else min(n, len(ds))):
        pix, t = sampler.images(i, np.arange(N_IMAGES))
        if model.aux is not None:  # the auxiliary read-out's maximum too: does it learn the filter?
            both = [model.both(c) for c in _chunks(pix)]
            lg = torch.cat([b[0] for b in both])
            aux_vol.append(float(torch.cat([b[1] for b in both]).max()))
        else:
            lg = torch.cat([model(c) for c in _chunks(pix)])
        vol.append(float(lg.max()))
        labels.append(np.asarray(ds.labels[i]))
        tok.append(lg.flatten().numpy())
        tok_y.append(t[..., k].flatten().numpy())
    model.train()
    vol, labels = np.asarray(vol), np.stack(labels)
    known = labels[:, k] >= 0
    got = {
        "volume_max_auc": _auc(labels[known, k], vol[known]),
        "token_auc": _auc(np.concatenate(tok_y), np.concatenate(tok)),
        "labelled": int(known.sum()),
        "positive": int((labels[known, k] == 1).sum()),
        "look_alikes": look_alikes_of(vol, labels, k),
    }
    if aux_vol:
        got["aux_volume_max_auc"] = _auc(labels[known, k], np.asarray(aux_vol)[known])
    return got


def rank_loss(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Mean softplus(negative - positive) over every positive token of the batch and each of its
    ``k`` highest-scoring negative tokens (the hardest, wherever they are); 0 without a positive.
    ``logits``, ``labels``: any shape, the same."""
    s, y = logits.flatten(), labels.flatten() > 0
    if not bool(y.any()) or bool(y.all()):
        return logits.sum() * 0.0
    neg = s[~y].topk(min(k, int((~y).sum()))).values
    return torch.nn.functional.softplus(neg[None, :] - s[y][:, None]).mean()


def fit(
    model: TokenDetector,
    batches,
    steps: int,
    rng: np.random.Generator,
    on_step=None,
    split_negatives: bool = False,
    rank_negatives: int = 0,
    blob_target: float = 0.0,
    mined=None,
) -> list[float]:
    """Train ``model`` for ``steps`` steps on ``batches(rng)`` -> (pixels, token labels (n, T, 1))
    with the stage-1 token loss plus the token-max loss (balanced per class), AdamW with a one-cycle
    schedule. ``on_step(step, losses)`` is called after each step. ``split_negatives``: the token
    loss weighs the negatives that hold another finding as much as the rest (``finding_loss``;
    ``batches`` then also returns those tokens, (n, T, 1)); ``rank_negatives`` K > 0 adds
    ``rank_loss`` with K hardest negatives; ``blob_target`` W > 0 adds W x the mean squared error of
    the model's second read-out (``TokenDetector(aux=True)``) against ``blob_tokens``; ``mined(model,
    rng)`` -> more images in ``batches``' form (``mine``), added to each step's batch. Returns the
    losses."""
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    losses: list[float] = []
    model.train()
    for step in range(1, steps + 1):
        pix, tok, *other = batches(rng)
        if mined is not None:
            more = mined(model, rng)
            pix, tok = torch.cat([pix, more[0]]), torch.cat([tok, more[1]])
            other = [torch.cat([other[0], more[2]])] if other else other
        if blob_target > 0:
            lg, aux = model.both(pix)
            lg = lg[..., None]
        else:
            lg = model(pix)[..., None]
        split = {"split_negatives": True, "other": other[0]} if split_negatives else {}
        loss = finding_loss(lg, tok, mode="balanced", **split) + token_max_loss(lg, tok, mode="balanced")
        if rank_negatives > 0:
            loss = loss + rank_loss(lg, tok, rank_negatives)
        if blob_target > 0:
            loss = loss + blob_target * torch.nn.functional.mse_loss(aux, blob_tokens(pix))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, losses)
    return losses


def train_detector(
    train,
    valid,
    k: int,
    steps: int,
    eval_every: int,
    seed: int = 0,
    log=print,
    split_negatives: bool = False,
    eval_train: int = 0,
    rank_negatives: int = 0,
    blob_target: float = 0.0,
    mine_negatives: int = 0,
    blob_channel: bool = False,
) -> dict:
    """``fit`` a new detector for finding ``k`` on ``train`` (``draw``), evaluated on ``valid``
    every ``eval_every`` steps and at the end."""
    torch.manual_seed(seed)
    model = TokenDetector(aux=blob_target > 0, blob_channel=blob_channel)
    st, sv = _ImageSampler(train, PATCH), _ImageSampler(valid, PATCH)
    curve, start = [], time.time()

    def on_step(step: int, losses: list[float]) -> None:
        if step % eval_every == 0 or step == steps:
            got = evaluate(model, sv, valid, k)
            if eval_train:  # the same on phantoms it trained on: how much of it is memorised
                got["train"] = evaluate(model, st, train, k, n=eval_train)
            got.update(step=step, train_loss=round(float(np.mean(losses[-eval_every:])), 4))
            got["seconds"] = round(time.time() - start, 1)
            curve.append(got)
            log(f"step {step}: {got}")

    fit(
        model,
        lambda rng: draw(st, train, k, rng, phantoms=8, per=4),
        steps,
        np.random.default_rng(seed),
        on_step,
        split_negatives,
        rank_negatives,
        blob_target,
        (lambda m, rng: mine(m, st, train, k, rng, mine_negatives)) if mine_negatives > 0 else None,
    )
    return {"curve": curve, "final": curve[-1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--finding", default="lung_nodule")
    ap.add_argument("--train", type=int, default=800)
    ap.add_argument("--valid", type=int, default=200)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--cache", default="cache/hyperct-demo")
    ap.add_argument("--matrix", type=int, default=192)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--eval-train", type=int, default=0, help="also score the first N training phantoms (memorised?)"
    )
    ap.add_argument(
        "--split-negatives",
        action="store_true",
        help="the token loss weighs negatives that hold another finding as much as the rest",
    )
    ap.add_argument(
        "--rank-negatives",
        type=int,
        default=0,
        metavar="K",
        help="add a ranking loss: each positive token above the batch's K highest negative tokens",
    )
    ap.add_argument(
        "--blob-target",
        type=float,
        default=0.0,
        metavar="W",
        help="add an auxiliary read-out that learns the blob filter's response per token, weight W",
    )
    ap.add_argument(
        "--mine-negatives",
        type=int,
        default=0,
        metavar="P",
        help="each step also scores P phantoms on all 55 images and trains on each one's hardest negative image",
    )
    ap.add_argument(
        "--blob-channel",
        action="store_true",
        help="the blob filter's response per pixel is a fourth input channel (a fixed feature)",
    )
    ap.add_argument("--out")
    args = ap.parse_args()
    k = catalogue().ids.index(args.finding)
    train, valid = probe_datasets(args)
    start = time.time()
    got = train_detector(
        train,
        valid,
        k,
        args.steps,
        args.eval_every,
        args.seed,
        log=lambda m: print(m, file=sys.stderr),
        split_negatives=args.split_negatives,
        eval_train=args.eval_train,
        rank_negatives=args.rank_negatives,
        blob_target=args.blob_target,
        mine_negatives=args.mine_negatives,
        blob_channel=args.blob_channel,
    )
    emit_json(
        {
            "benchmark": "nodule_cnn_oracle",
            "finding": args.finding,
            "train_phantoms": args.train,
            "valid_phantoms": args.valid,
            "steps": args.steps,
            "seed": args.seed,
            "split_negatives": args.split_negatives,
            "rank_negatives": args.rank_negatives,
            "blob_target": args.blob_target,
            "mine_negatives": args.mine_negatives,
            "blob_channel": args.blob_channel,
            "images_per_step": 32 + args.mine_negatives,
            "torch_threads": torch.get_num_threads(),
            **got,
            "seconds": round(time.time() - start, 1),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
