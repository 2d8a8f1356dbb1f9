"""Backbone pretraining on phantom slices: stage 1 of the demo model.

HyperCT (the paper) adapts a *pretrained* DINOv3 ViT-B/16 that stays frozen. DINOv3 weights cannot be
downloaded here, and a ViT trained from random initialisation through HyperCT's own objective (one
binary label per 55-image volume) learns too slowly on two CPU cores. So the demo backbone is
pretrained first, the way a foundation backbone would be, but on the project's own synthetic data:

* inputs: single model images (3 consecutive slices of the 165 x 144 x 144 grid as RGB, normalised
  exactly as HyperCT's preprocessing) from the cached training phantoms;
* targets: where each of the 25 findings is, per patch token (``token_labels``: the phantom's ground
  truth masks) and per image (any token);
* heads: a linear layer on every final patch token and one on the CLS token (both discarded after);
* loss: binary cross-entropy on tokens and images, positives up-weighted;
* optionally (``optim.volume_loss_weight`` > 0, all 55 images per phantom) a volume-level head on the
  mean CLS feature over the 55 images -- exactly the feature HyperCT's task-shared head reads -- with
  the volume's 25 labels. Token and image supervision teach the backbone *where* findings are; the
  volume objective asks it to carry them into the pooled CLS feature, which is what a frozen
  backbone must provide to stage 2 (measured gain so far: small, see
  configs/demo_backbone_volume.yaml). ``init`` starts from an earlier backbone folder.

The result is written as a DINOv3 folder in the Hugging Face layout (``config.json`` +
``model.safetensors``), exactly what a user's DINOv3 download looks like, so stage 2 is a normal
``hyperct train`` with ``model.backbone_weights`` pointing at it.

    hyperct pretrain --config configs/demo_backbone.yaml --out runs/demo-backbone
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from hyperct.errors import ConfigError
from hyperct.model.backbone import (
    build_backbone,
    config_to_dict,
    encoder_layers,
    load_backbone,
    save_backbone,
)
from hyperct.preprocess import N_IMAGES, normalise
from hyperct.training.cache import PreprocessCache, decode
from hyperct.training.datasets import PhantomDataset, build_dataset
from hyperct.training.metrics import roc_auc
from hyperct.training.progress import progress_bar

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "backbone": "demo",
    "init": None,
    "data": {
        "train": None,
        "valid": None,
        "cache_dir": None,
        "cache_dtype": "uint8",
        "prepare_workers": 1,
    },
    "optim": {
        "epochs": 4,
        "lr": 1.0e-3,
        "weight_decay": 0.05,
        "warmup_steps": 200,
        "min_factor": 0.02,
        "grad_clip": 1.0,
        "phantoms_per_step": 2,
        "images_per_phantom": 24,
        "token_pos_weight": 4.0,
        "image_pos_weight": 2.0,
        "volume_loss_weight": 0.0,
        "volume_pos_weight": 2.0,
    },
    "valid": {"phantoms": 60},
}


def load_pretrain_config(path: str | Path | None, overrides: dict | None = None) -> dict:
    """DEFAULTS updated by the YAML file (unknown fields are an error, naming the field)."""
    cfg = copy.deepcopy(DEFAULTS)
    raw: dict = {}
    if path:
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read the configuration ({exc})", path=path) from exc
    for src in (raw, overrides or {}):
        for key, value in src.items():
            if key not in cfg:
                raise ConfigError(f"{key}: unknown field (allowed: {', '.join(cfg)})", path=path)
            if isinstance(cfg[key], dict) and isinstance(value, dict):
                unknown = sorted(set(value) - set(cfg[key]))
                if unknown:
                    raise ConfigError(
                        f"{key}.{unknown[0]}: unknown field (allowed: {', '.join(cfg[key])})", path=path
                    )
                cfg[key].update(value)
            else:
                cfg[key] = value
    if not cfg["data"]["train"] or cfg["data"]["train"].get("type") != "phantom":
        raise ConfigError(
            "data.train: backbone pretraining needs a phantom dataset (finding masks)", path=path
        )
    oc = cfg["optim"]
    if float(oc["volume_loss_weight"]) > 0 and int(oc["images_per_phantom"]) != N_IMAGES:
        raise ConfigError(
            f"optim.volume_loss_weight: the volume objective pools all {N_IMAGES} images of a phantom; "
            f"set optim.images_per_phantom to {N_IMAGES} (it is {oc['images_per_phantom']})",
            path=path,
        )
    return cfg


class PretrainHeads(nn.Module):
    """Token-level and image-level finding classifiers on top of the backbone (discarded after)."""

    def __init__(self, hidden: int, n_findings: int, *, volume: bool = True):
        super().__init__()
        self.token = nn.Linear(hidden, n_findings)
        self.image = nn.Linear(hidden, n_findings)
        # Only built when the volume objective is on: an extra layer would shift the random stream
        # and stage 1 (configs/demo_backbone.yaml) would no longer reproduce the shipped backbone.
        self.volume = nn.Linear(hidden, n_findings) if volume else None


def volume_logits(heads: PretrainHeads, cls: torch.Tensor, n_phantoms: int) -> torch.Tensor:
    """(P, 25) volume logits from the (P*55, D) final CLS features of P whole phantoms (mean over images)."""
    if heads.volume is None:
        raise ValueError("these pretraining heads have no volume head (volume objective off)")
    return heads.volume(cls.reshape(n_phantoms, -1, cls.shape[-1]).mean(dim=1))


def forward_heads(
    backbone, heads: PretrainHeads, pixels: torch.Tensor, *, with_cls: bool = False
) -> tuple[torch.Tensor, ...]:
    """(N, 81, 25) token logits and (N, 25) image logits for (N, 3, 144, 144) images (+ the (N, D) CLS)."""
    out = backbone(pixel_values=pixels).last_hidden_state
    n_prefix = 1 + backbone.config.num_register_tokens
    res = (heads.token(out[:, n_prefix:]), heads.image(out[:, 0]))
    return res + (out[:, 0],) if with_cls else res


def masked_bce(logits: torch.Tensor, labels: torch.Tensor, pos_weight: torch.Tensor) -> torch.Tensor:
    """BCE over the labelled entries only (labels -1 = not labelled); 0 when none is labelled."""
    known = labels >= 0
    if not bool(known.any()):
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[known], labels[known].float(), pos_weight=pos_weight)


class _ImageSampler:
    """Draws images (and their token labels) of cached phantoms, deterministically per (seed, epoch)."""

    def __init__(self, ds: PhantomDataset):
        self.ds = ds

    def images(self, i: int, which: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        stored = self.ds.cache.stored(self.ds._key(i))
        if stored is None:
            self.ds.model_hu(i)
            stored = self.ds.cache.stored(self.ds._key(i))
        slices = np.concatenate([np.arange(3 * n, 3 * n + 3) for n in which])
        hu = torch.from_numpy(decode(np.asarray(stored[slices])))
        pixels = normalise(hu)  # (len(which), 3, 144, 144)
        tokens = torch.from_numpy(self.ds.token_labels(i)[which])  # (n, 9, 9, 25)
        return pixels, tokens.reshape(len(which), -1, tokens.shape[-1]).float()


def echo(msg: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(msg)


def _lr_factor(step: int, total: int, warmup: int, min_factor: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


@torch.no_grad()
def validate(backbone, heads, ds: PhantomDataset, n_phantoms: int) -> dict:
    """Per-finding AUC of the image head (all images of the first ``n_phantoms`` phantoms) and of the token head."""
    backbone.eval()
    sampler = _ImageSampler(ds)
    img_scores, img_labels, tok_scores, tok_labels, vol_scores = [], [], [], [], []
    n = min(n_phantoms, len(ds))
    for i in range(n):
        pixels, tokens = sampler.images(i, np.arange(N_IMAGES))
        tok, img, cls = forward_heads(backbone, heads, pixels, with_cls=True)
        if heads.volume is not None:
            vol_scores.append(volume_logits(heads, cls, 1).numpy())
        img_scores.append(img.numpy())
        img_labels.append(tokens.amax(dim=1).numpy())
        tok_scores.append(tok.reshape(-1, tok.shape[-1]).numpy())
        tok_labels.append(tokens.reshape(-1, tokens.shape[-1]).numpy())
    series = [("image_auc", img_scores, img_labels), ("token_auc", tok_scores, tok_labels)]
    if vol_scores:  # volume objective on
        series.append(("volume_auc", vol_scores, [np.asarray(ds.labels[:n])]))
    out: dict[str, Any] = {name: {} for name, _, _ in series}
    from hyperct.findings import catalogue

    for name, scores, labels in series:
        s, y = np.concatenate(scores), np.concatenate(labels)
        for k, fid in enumerate(catalogue().ids):
            known = y[:, k] >= 0
            yk, sk = y[known, k], s[known, k]
            if 0 < yk.sum() < len(yk):
                out[name][fid] = round(float(roc_auc(yk, sk)), 4)
    for name, _, _ in series:
        vals = list(out[name].values())
        out[f"mean_{name}"] = round(float(np.mean(vals)), 4) if vals else None
    return out


def pretrain_backbone(
    cfg: dict, out_dir: str | Path, *, overwrite: bool = False, source: str | None = None
) -> Path:
    """Run stage 1 and write the backbone folder (``config.json``, ``model.safetensors``, ``pretrain.json``)."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError("the output folder already exists", path=out, hint="pass --overwrite to replace it")
    seed = int(cfg["seed"])
    torch.manual_seed(seed)
    oc, dc = cfg["optim"], cfg["data"]
    cache = PreprocessCache(dc["cache_dir"], dc["cache_dtype"]) if dc["cache_dir"] else PreprocessCache(None)
    workers = max(1, int(dc["prepare_workers"]))
    train = build_dataset(
        dc["train"], cache=cache, field="data.train", source=source, progress=True, workers=workers
    )
    valid = None
    if dc["valid"]:
        valid = build_dataset(
            dc["valid"], cache=cache, field="data.valid", source=source, progress=True, workers=workers
        )

    if cfg["init"]:
        # reseed as build_backbone(seed=...) does below: the heads' initialisation must not depend
        # on whether the phantoms above were generated or read from the cache
        torch.manual_seed(seed)
        backbone = load_backbone(cfg["init"])  # BackboneWeightsError naming the folder if it is wrong
    else:
        backbone = build_backbone(cfg["backbone"], seed=seed)
    backbone.embeddings.mask_token.requires_grad_(False)  # unused (no masked-image modelling)
    heads = PretrainHeads(
        backbone.config.hidden_size, train.labels.shape[1], volume=float(oc["volume_loss_weight"]) > 0
    )
    params = [p for p in list(backbone.parameters()) + list(heads.parameters()) if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": float(oc["weight_decay"])},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=float(oc["lr"]),
    )
    per_step, per_phantom = int(oc["phantoms_per_step"]), int(oc["images_per_phantom"])
    steps_per_epoch = math.ceil(len(train) / per_step)
    total = steps_per_epoch * int(oc["epochs"])
    tok_pw = torch.tensor(float(oc["token_pos_weight"]))
    img_pw = torch.tensor(float(oc["image_pos_weight"]))
    vol_w = float(oc["volume_loss_weight"])
    vol_pw = torch.tensor(float(oc["volume_pos_weight"]))
    sampler = _ImageSampler(train)
    log: list[dict] = []
    step = 0
    start = time.time()
    for epoch in range(1, int(oc["epochs"]) + 1):
        backbone.train()
        encoder_layers(backbone)  # (structure check: a DINOv3 ViT)
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(train))
        losses = []
        bar = progress_bar(range(steps_per_epoch), desc=f"pretrain epoch {epoch}/{oc['epochs']}", unit="step")
        for s in bar:
            idx = order[s * per_step : (s + 1) * per_step]
            batch = [
                sampler.images(
                    int(i), np.sort(rng.choice(N_IMAGES, size=min(per_phantom, N_IMAGES), replace=False))
                )
                for i in idx
            ]
            pixels = torch.cat([b[0] for b in batch])
            tokens = torch.cat([b[1] for b in batch])
            for group in optimizer.param_groups:
                group["lr"] = float(oc["lr"]) * _lr_factor(
                    step, total, int(oc["warmup_steps"]), float(oc["min_factor"])
                )
            tok_logits, img_logits, cls = forward_heads(backbone, heads, pixels, with_cls=True)
            loss = F.binary_cross_entropy_with_logits(
                tok_logits, tokens, pos_weight=tok_pw
            ) + F.binary_cross_entropy_with_logits(img_logits, tokens.amax(dim=1), pos_weight=img_pw)
            if vol_w > 0:
                vol_labels = torch.from_numpy(np.asarray(train.labels[idx], dtype=np.int64))
                loss = loss + vol_w * masked_bce(volume_logits(heads, cls, len(idx)), vol_labels, vol_pw)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if oc["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(params, float(oc["grad_clip"]))
            optimizer.step()
            losses.append(float(loss.detach()))
            step += 1
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        entry: dict[str, Any] = {
            "epoch": epoch,
            "loss": round(float(np.mean(losses)), 5),
            "seconds": round(time.time() - start, 1),
        }
        if valid is not None:
            entry["valid"] = validate(backbone, heads, valid, int(cfg["valid"]["phantoms"]))
        log.append(entry)
        msg = f"pretrain epoch {epoch}: loss {entry['loss']:.4f}"
        if valid is not None:
            v = entry["valid"]
            msg += f"  image AUC {v['mean_image_auc']}  token AUC {v['mean_token_auc']}"
            if vol_w > 0:
                msg += f"  volume AUC {v['mean_volume_auc']}"
        echo(msg)

    backbone.eval()
    save_backbone(backbone, out)
    report = {
        "stage": "backbone pretraining on phantom slices (token-level finding masks)",
        "backbone": config_to_dict(backbone.config),
        "config": cfg,
        "train": train.describe(),
        "valid": valid.describe() if valid is not None else None,
        "log": log,
    }
    (out / "pretrain.json").write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    return out
