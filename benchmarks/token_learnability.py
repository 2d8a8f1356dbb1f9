"""Can a token see a small finding at all? Paired-phantom learnability of the token task (issue 18).

    python benchmarks/token_learnability.py [--arms patch_mlp,window_mlp,hand,frozen,finetune] [--patch 8] \
        [--backbone progress/demo-backbone-v1] [--findings coronary_artery_wall_calcification,...] \
        [--train-seeds 12] [--test-seeds 6] [--seconds 600] [--pairs runs/pairs.pt] \
        [--out benchmarks/results/token_learnability.json]

The stage-1 backbone does not represent the small findings (``paired_response.py``: the same token
logit with and without them). This separates the causes. Each finding gets phantom pairs (the seed
with only that finding, and the same seed without it: they differ only inside the lesion mask); of
each pair the images holding the finding are kept. A token is positive where the finding's mask
labels it (``hyperct.training.token_labels``). Arms, each trained on the training pairs only
(seeds 410000..; severity uniform in [0.3, 0.9]) with the stage-1 balanced loss, one output per
finding, for ``--seconds`` each (the test is scored after a tenth, a quarter and half of it too:
``curve``, to see memorising):

* ``patch_mlp``: a per-token network on the token's own pixels alone (the ViT's linear patch
  embedding, 768 -> D, then LayerNorm and one MLP block of width 4D, then the head), from scratch:
  can the token path of a patch-P ViT of width D tell the finding apart at all?
* ``window_mlp``: the same on the token's pixels and their HU-windowed copies
  (``hyperct.network.windows``, ``DEMO_WINDOWS``): the window/level ramps as input channels;
* ``hand``: fixed statistics of the token's HU values (``hand_features``) under a small MLP: is the
  finding in the token's pixels for a scorer with the obvious nonlinear readouts built in?
* ``frozen``: the backbone's final patch features, frozen, under a trained linear head (what the
  stage-1 features carry; ``paired_response.py``'s separability, on more pairs);
* ``finetune``: the whole backbone trained on the token task with a fresh linear head (does the
  backbone learn it when the task is asked alone, at a learning rate stage 1 uses?);
* ``window_finetune``: the same after ``add_windows`` (the backbone with HU windows, starting as
  it was).

Measured on test pairs (seeds 400000.., severity 0.5, as ``paired_response.py``):
``paired_ranked``, the share of the finding's tokens that score higher with the finding than at the
same place without it (a scan-ignoring or location-only scorer gets 0.5 exactly: ties count half),
and ``auc_vs_background``, the AUC of those tokens against every other token of the same images
(finding-free twin included). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))

from _output import emit_json  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from hyperct.findings import catalogue  # noqa: E402
from hyperct.network.backbone import load_backbone, repatch_backbone  # noqa: E402
from hyperct.network.windows import DEMO_WINDOWS, WindowedPatchEmbedding, add_windows  # noqa: E402
from hyperct.phantom import generate  # noqa: E402
from hyperct.preprocess import model_grid_hu, normalise, resample_hu  # noqa: E402
from hyperct.training.metrics import roc_auc  # noqa: E402
from hyperct.training.pretrain import finding_loss  # noqa: E402
from hyperct.training.token_labels import token_labels  # noqa: E402

TEST_SEED, TRAIN_SEED = 400000, 410000
SMALL = (
    "coronary_artery_wall_calcification",
    "arterial_wall_calcification",
    "medical_material",
    "lung_nodule",
    "lymphadenopathy",
)


def _with(job: tuple[int, str, float, int, int]):
    """The scan of ``seed`` with only finding ``fid``: (its images holding the finding, their token
    labels, the indices of those images), or None when the finding left no mark."""
    seed, fid, severity, matrix, patch = job
    ph = generate(seed, {fid: severity}, matrix=matrix)
    mask = ph.masks.get(fid)
    if mask is None or not mask.any():
        return None
    k = catalogue().ids.index(fid)
    on = token_labels({fid: mask}, ph.volume.shape, patch=patch)[..., k].reshape(55, -1)
    images = np.flatnonzero(on.any(axis=1))
    return normalise(resample_hu(ph.volume.hu))[images].half(), torch.from_numpy(on[images]), images


def _without(job: tuple[int, int]) -> torch.Tensor:
    """All 55 images of the scan of ``seed`` without any finding (the twin of every finding's scan)."""
    seed, matrix = job
    return normalise(resample_hu(generate(seed, {}, matrix=matrix).volume.hu)).half()


def build_pairs(findings, seeds, severity, matrix, patch, workers, rng):
    """Per finding, its pairs (pixels with, pixels without, token labels, seed) of the images holding
    it. Each seed's finding-free scan is generated once and shared by every finding's pair."""
    jobs = [
        (s, f, float(severity if severity else rng.uniform(0.3, 0.9)), matrix, patch)
        for f in findings
        for s in seeds
    ]
    # spawn: a forked child of a process that has run torch can deadlock in its thread pool
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        got = pool.map(_with, jobs, chunksize=1)
        without = dict(zip(seeds, pool.map(_without, [(s, matrix) for s in seeds], chunksize=1), strict=True))
    data = {f: [] for f in findings}
    for (seed, fid, *_), g in zip(jobs, got, strict=True):
        if g is not None:
            pixels, on, images = g
            data[fid].append((pixels, without[seed][images], on, seed))
    return data


def as_images(data: dict, findings: list[str]):
    """Stack pairs into (N, 3, H, W) images, (N, T, F) token labels, (N,) pair ids, (N,) is_with."""
    px, lab, pair, is_with = [], [], [], []
    n_pairs = 0
    for j, f in enumerate(findings):
        for w, wo, on, _ in data[f]:
            for img, pos in ((w, True), (wo, False)):
                y = torch.zeros(on.shape[0], on.shape[1], len(findings))
                if pos:
                    y[..., j] = on.float()
                px.append(img)
                lab.append(y)
                pair.append(torch.full((on.shape[0],), n_pairs))
                is_with.append(torch.full((on.shape[0],), pos))
            n_pairs += 1
    return torch.cat(px), torch.cat(lab), torch.cat(pair), torch.cat(is_with)


def patches_of(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, 3, H, W) -> (N, T, 3 * patch * patch), row-major tokens as the ViT's."""
    n, c, h, w = pixels.shape
    x = pixels.reshape(n, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, (h // patch) * (w // patch), c * patch * patch)


def hand_features(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, 3, H, W) normalised images -> (N, T, 9) fixed nonlinear statistics of each token's HU
    values: mean, sd, max, min, 90th percentile, and the fractions above 130 HU (calcium, metal), in
    (-150, 100) (soft tissue), in (-100, -20) (fat) and below -500 (lung, air): a scorer with the
    obvious nonlinear readouts built in."""
    hu = patches_of(model_grid_hu(pixels.float()).reshape(pixels.shape), patch)
    feats = [
        hu.mean(-1),
        hu.std(-1),
        hu.amax(-1),
        hu.amin(-1),
        hu.quantile(0.9, dim=-1),
        (hu > 130).float().mean(-1),
        ((hu > -150) & (hu < 100)).float().mean(-1),
        ((hu > -100) & (hu < -20)).float().mean(-1),
        (hu < -500).float().mean(-1),
    ]
    return torch.stack(feats, dim=-1)


class PatchMLP(nn.Module):
    def __init__(self, n_in: int, width: int, n_out: int):
        super().__init__()
        self.embed = nn.Linear(n_in, width)
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.head = nn.Linear(width, n_out)

    def forward(self, tokens):
        h = self.embed(tokens)
        h = h + self.mlp(self.norm1(h))
        return self.head(self.norm2(h))


class BackboneTokens(nn.Module):
    def __init__(self, backbone, n_out: int, frozen: bool):
        super().__init__()
        self.backbone, self.frozen = backbone, frozen
        self.n_prefix = 1 + backbone.config.num_register_tokens
        self.head = nn.Linear(backbone.config.hidden_size, n_out)
        for p in backbone.parameters():
            p.requires_grad_(not frozen)

    def features(self, pixels):
        with torch.set_grad_enabled(not self.frozen and torch.is_grad_enabled()):
            return self.backbone(pixel_values=pixels).last_hidden_state[:, self.n_prefix :]

    def forward(self, pixels):
        return self.head(self.features(pixels))


def train(model, inputs, labels, *, seconds, lr, batch, rng, check=None, weight_decay=0.05):
    """AdamW on the balanced loss for ``seconds`` of training; ``check(model)`` (the test's mean
    paired_ranked) after a tenth, a quarter and half of the time (not counted): the learning curve."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    t0, paused, steps, losses, curve = time.time(), 0.0, 0, [], []
    marks = [0.1, 0.25, 0.5] if check is not None else []

    def elapsed() -> float:
        return time.time() - t0 - paused

    model.train()
    while elapsed() < seconds:
        if marks and elapsed() >= marks[0] * seconds:
            t_check = time.time()
            model.eval()
            curve.append({"step": steps, "test": check(model)})
            model.train()
            paused += time.time() - t_check
            marks.pop(0)
        idx = torch.from_numpy(rng.choice(len(inputs), size=min(batch, len(inputs)), replace=False))
        logits = model(inputs[idx].float())
        loss = finding_loss(logits, labels[idx], mode="balanced")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        steps += 1
    model.eval()
    return {
        "steps": steps,
        "seconds": round(elapsed(), 1),
        "final_loss": round(float(np.mean(losses[-20:])), 4),
        "curve": curve,
    }


@torch.no_grad()
def scores(model, inputs, batch=32):
    return torch.cat([model(inputs[i : i + batch].float()) for i in range(0, len(inputs), batch)])


def evaluate(logits, labels, pair, is_with, findings):
    """Per finding: paired_ranked and auc_vs_background on the test images of that finding's pairs."""
    out = {}
    for j, f in enumerate(findings):
        own = labels[..., j].sum(dim=1) > 0  # with-images of finding f
        pairs_f = torch.unique(pair[own])
        sel = torch.isin(pair, pairs_f)
        ranked = []
        for p in pairs_f.tolist():
            w = (pair == p) & is_with
            wo = (pair == p) & ~is_with
            on = labels[w][..., j] > 0
            sw, swo = logits[w][..., j][on], logits[wo][..., j][on]
            ranked.append((sw > swo).float() + 0.5 * (sw == swo).float())
        pos = (labels[..., j] > 0) & sel[:, None]
        bg = (labels[..., j] == 0) & sel[:, None]
        pos_scores, bg_scores = logits[..., j][pos], logits[..., j][bg]
        y = np.r_[np.ones(pos_scores.numel()), np.zeros(bg_scores.numel())]
        s = np.r_[pos_scores.numpy(), bg_scores.numpy()]
        out[f] = {
            "pairs": int(pairs_f.numel()),
            "tokens": int(pos_scores.numel()),
            "paired_ranked": round(float(torch.cat(ranked).mean()), 3),
            "auc_vs_background": round(float(roc_auc(y, s)), 3),
        }
    vals = [v["paired_ranked"] for v in out.values()]
    return {"mean_paired_ranked": round(float(np.mean(vals)), 3), "per_finding": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", default="patch_mlp,frozen,finetune")
    ap.add_argument("--backbone", default="progress/demo-backbone-v1")
    ap.add_argument("--patch", type=int, help="repatch the backbone to this patch (8); also the patch_mlp's")
    ap.add_argument("--findings", default=",".join(SMALL))
    ap.add_argument("--train-seeds", type=int, default=12)
    ap.add_argument("--test-seeds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=600, help="training time per arm")
    ap.add_argument("--lr", type=float, default=5e-4, help="finetune arm (patch_mlp and frozen: 2e-3)")
    ap.add_argument("--batch", type=int, default=24, help="images per step")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--matrix", type=int, default=192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--pairs", help="a .pt file keeping the generated pairs: read when it exists, else written"
    )
    ap.add_argument("--out")
    args = ap.parse_args()

    t0 = time.time()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    findings = args.findings.split(",")
    unknown = [f for f in findings if f not in catalogue().ids]
    if unknown:
        sys.exit(f"unknown finding id(s): {', '.join(unknown)}; the ids are in assets/findings.yaml")
    backbone = load_backbone(args.backbone)
    patch = int(args.patch or backbone.config.patch_size)
    key = [findings, args.train_seeds, args.test_seeds, args.matrix, patch, args.seed]
    if args.pairs and Path(args.pairs).is_file() and torch.load(args.pairs)["key"] == key:
        tr_px, tr_lab, te_px, te_lab, te_pair, te_with = torch.load(args.pairs)["tensors"]
    else:
        gen_rng = np.random.default_rng([args.seed, 1])  # the training severities
        train_data = build_pairs(
            findings,
            range(TRAIN_SEED, TRAIN_SEED + args.train_seeds),
            None,
            args.matrix,
            patch,
            args.workers,
            gen_rng,
        )
        test_data = build_pairs(
            findings,
            range(TEST_SEED, TEST_SEED + args.test_seeds),
            0.5,
            args.matrix,
            patch,
            args.workers,
            gen_rng,
        )
        tr_px, tr_lab, _, _ = as_images(train_data, findings)
        te_px, te_lab, te_pair, te_with = as_images(test_data, findings)
        if args.pairs:
            torch.save({"key": key, "tensors": (tr_px, tr_lab, te_px, te_lab, te_pair, te_with)}, args.pairs)
    print(
        f"pairs ready: {len(tr_px)} training, {len(te_px)} test images ({time.time() - t0:.0f} s)",
        file=sys.stderr,
    )
    result = {
        "benchmark": "token_learnability_on_phantom_pairs",
        "backbone": args.backbone,
        "patch_size": patch,
        "findings": findings,
        "train_images": len(tr_px),
        "test_images": len(te_px),
        "seconds_per_arm": args.seconds,
        "arms": {},
    }
    for arm in args.arms.split(","):
        torch.manual_seed(args.seed)
        lr = 2e-3
        if arm in ("patch_mlp", "window_mlp"):
            if arm == "window_mlp":
                stem = WindowedPatchEmbedding(3, 1, patch, DEMO_WINDOWS)
                tr_in, te_in = (patches_of(stem.windowed(x), patch) for x in (tr_px, te_px))
            else:
                tr_in, te_in = patches_of(tr_px, patch), patches_of(te_px, patch)
            model = PatchMLP(tr_in.shape[-1], int(backbone.config.hidden_size), len(findings))
        elif arm == "hand":
            tr_in, te_in = hand_features(tr_px, patch), hand_features(te_px, patch)
            mu, sd = tr_in.mean(dim=(0, 1)), tr_in.std(dim=(0, 1)).clamp_min(1e-6)
            tr_in, te_in = (tr_in - mu) / sd, (te_in - mu) / sd
            model = nn.Sequential(nn.Linear(tr_in.shape[-1], 64), nn.GELU(), nn.Linear(64, len(findings)))
        elif arm in ("frozen", "finetune", "window_finetune"):
            bb = load_backbone(args.backbone)
            if patch != int(bb.config.patch_size):
                bb = repatch_backbone(bb, patch)
            if arm == "window_finetune" and not getattr(bb.config, "hu_windows", None):
                bb = add_windows(bb, DEMO_WINDOWS)
            model = BackboneTokens(bb, len(findings), frozen=arm == "frozen")
            lr = lr if arm == "frozen" else args.lr
            tr_in, te_in = tr_px, te_px
        else:
            sys.exit(
                f"unknown arm {arm!r}: use patch_mlp, window_mlp, hand, frozen, finetune, window_finetune"
            )

        def check(m, te_in=te_in):
            return evaluate(scores(m, te_in), te_lab, te_pair, te_with, findings)["mean_paired_ranked"]

        fit = train(model, tr_in, tr_lab, seconds=args.seconds, lr=lr, batch=args.batch, rng=rng, check=check)
        res = evaluate(scores(model, te_in), te_lab, te_pair, te_with, findings)
        result["arms"][arm] = {"training": fit, **res}
        print(arm, json.dumps(result["arms"][arm]), file=sys.stderr, flush=True)
    result["seconds"] = round(time.time() - t0, 1)
    emit_json(result, args.out)


if __name__ == "__main__":
    main()
