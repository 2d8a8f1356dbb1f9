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

Stage 1 v1 (``configs/demo_backbone_v1.yaml``; issue 18) adds what the pooled feature needs:

* **bag objective** (``optim.bag_loss_weight`` > 0): per phantom a random bag of ``bag_min`` ..
  ``bag_max`` of its 55 images; a linear head on the bag's MEAN CLS feature (how HyperCT reads the
  backbone) predicts the 25 findings, labelled exactly from the token masks (``bag_labels``: a
  finding is present in the bag when any token of any bag image is positive; a bag without
  positive tokens is negative for every finding);
* **positive-aware sampling** (``sample_bag``): at least ``positive_fraction`` of a bag's images
  contain a positive token whenever the phantom has that many such images, picked finding by
  finding so that a nodule seen in two images is drawn as often as an effusion seen in forty;
* **per-finding balanced loss** (``optim.loss: balanced`` or ``focal``, ``finding_loss``): every
  finding's positives and negatives weigh half each, so large findings do not drown small ones;
* **pairs** (``data.train.pair: normal``): each seed comes with its twin, the same anatomy without
  findings; the twin gets the very same bag of image indices, so the two bags differ only inside
  the lesion masks and the backbone cannot score a finding from where it usually is;
  ``pair: drop_one`` twins lack only one of the phantom's findings;
* **pair contrast** (``optim.pair_loss_weight`` > 0, ``drop_one`` twins; ``pair_contrast_loss``):
  the phantom must score the finding its twin lacks above the twin at the same places -- on the
  tokens and images that hold it and on the two bags -- the hardest negative there is, since the
  two differ only inside the lesion;
* **heart geometry** (``optim.heart_loss_weight`` > 0; ``hyperct.training.heart_geometry``): a linear
  head on each bag's mean CLS regresses the phantom's heart numbers (chamber sizes, wall, vessel
  calibres; standardised): the cardiac findings are thresholds of these, and a label per phantom says
  little about a few millimetres of chamber radius. A resume may switch it on; on a trained backbone
  (a resume, or ``init``) the new head is first fitted to the backbone's mean CLS by ridge
  regression (``fit_heart_head``), then trained with it;
* **per-image heart** (``optim.heart_slice_loss_weight`` > 0; ``hyperct.training.heart_slices``): a
  linear head on each image's CLS regresses the mL of each chamber, the myocardium, the whole heart,
  the pulmonary artery and the IVC inside that image (the generator's geometry on the model grid;
  standardised). Unlike the whole-heart numbers these hold for any bag, and their sums over the 55
  images are the structures' volumes, which the mean CLS then carries linearly. A new head on a
  trained backbone is first fitted by ridge regression (``fit_slice_head``);
* **per-image lymph-node stations** (``optim.station_loss_weight`` > 0; ``hyperct.training.
  station_tissue``): a linear head on each image's CLS regresses the mL of soft tissue near each of
  the mediastinum's eight central lymph-node stations inside that image (the generator's stations,
  the phantom's model-grid HU), in every phantom: enlarged nodes are more of it, and its sums over
  the 55 images, which the mean CLS then carries linearly, find them where the mediastinal outline
  does not. A new head on a trained backbone is first fitted by ridge regression (``fit_image_head``);
* **per-image station excess** (``optim.station_excess_loss_weight`` > 0): the same, less the tissue
  expected at each image's z offset from each station (``station_tissue.station_excess_ml``): where an
  image lies explains about half of the station targets and none of the enlarged nodes
  (``benchmarks/level_oracle.py``); the excess leaves the amount;
* **teacher** (``optim.teacher_loss_weight`` > 0, ``optim.teacher``; ``hyperct.training.teacher``): a
  linear head on each image's CLS regresses a small per-image CNN's features of that image
  (standardised); the CNN, read as HyperCT reads a backbone, learns the cardiac findings in minutes
  (``benchmarks/reading_cnn_oracle.py``); its features are cached beside each phantom;
* **token max** (``optim.token_max_loss_weight`` > 0; ``token_max_loss``): multiple-instance
  learning over each image's tokens: the image's highest token logit per finding is scored against
  the image's label. The token loss averages over all negative tokens, most of them easy (air,
  fat); this term's negatives are each image's highest-scoring negative token, the look-alikes a
  finding must be told from in a whole volume;
* **lesion negatives** (``optim.split_negatives``; ``finding_loss``): in the token loss, a finding's
  negative tokens that hold another finding (the token head's maximum over a volume fires on them:
  the nodule's on lung opacity, the lymph nodes' on arterial calcification) weigh as much as all
  its other negative tokens together;
* **fresh seeds** (``data.fresh_seeds``): the training phantoms come in blocks of ``count`` seeds;
  a block is used for ``data.block_epochs`` epochs, then the next block of new seeds follows
  (generated in the background by ``data.prepare_workers`` processes while the current block
  trains, with its per-image heart shares when that objective is on); ``data.keep_blocks: false``
  deletes a used block from the (zlib-compressed, ``data.cache_compress``) cache;
* **stop and continue**: after every epoch the run folder gets the backbone (``config.json`` +
  ``model.safetensors``), ``log.jsonl`` (one line of metrics per epoch) and ``last/`` (resume
  state: backbone, heads, AdamW moments, the random generators, the next block). ``hyperct
  pretrain --resume DIR [--epochs N] [--set ...]`` continues on a NEW block of seeds (never
  re-reading the block it stopped in); changed settings are written to the folder's
  ``pretrain_config.yaml`` (the earlier ones kept as ``pretrain_config.before-epoch-N.yaml``).
  With the same ``optim.epochs``, a run stopped after any epoch (with fresh seeds: after the last
  epoch of a block) and resumed ends with the weights of an uninterrupted run, bit for bit on the
  CPU.
* **a deeper backbone from a trained one** (``init_extra_layers``): blocks appended to the ``init``
  backbone start as the identity (``deepen_backbone``), the capacity A/B without starting over.
* **a smaller patch from a trained one** (``init_patch_size``): the ``init`` backbone with its patch
  kernel summed down (``repatch_backbone``: 16 -> 8 starts as the trained network on the image
  magnified 2x), so small findings cover more of each token without starting over.
* **HU windows on a trained one** (``init_hu_windows``): the ``init`` backbone's patch embedding
  also reads each channel through window/level ramps and each ramp's maximum and mean over the
  patch (``hyperct.network.windows.add_windows``; starts as the trained network): a calcification's
  few bright voxels become a feature of its token at patch 16, computed once per image.
* **crops** (``optim.crop_size``): every training image cut to a square on the token grid, placed on
  one of its positive tokens where it has any (``hyperct.training.crops``; a ``drop_one`` twin gets
  the very same windows); labels from the crop's own tokens. A patch-8 backbone on 72-pixel crops
  costs per image what patch 16 costs on whole images. Validation stays on whole images.

The configuration (fields, defaults, checks) is ``hyperct.training.pretrain_config.PretrainConfig``,
read from the YAML files below and validated once at load.

The result is written as a DINOv3 folder in the Hugging Face layout (``config.json`` +
``model.safetensors``), exactly what a user's DINOv3 download looks like, so stage 2 is a normal
``hyperct train`` with ``model.backbone_weights`` pointing at it.

    hyperct pretrain --config configs/demo_backbone.yaml --out runs/demo-backbone
    hyperct pretrain --config configs/demo_backbone_v1.yaml --out runs/demo-backbone-v1
    hyperct pretrain --resume runs/demo-backbone-v1 --epochs 120
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hyperct.atomic import replace_file, replacing_folder
from hyperct.device import resolve_device
from hyperct.errors import ConfigError
from hyperct.network.backbone import (
    build_backbone,
    config_to_dict,
    deepen_backbone,
    encoder_layers,
    load_backbone,
    repatch_backbone,
    save_backbone,
)
from hyperct.network.windows import add_windows
from hyperct.preprocess import IMAGE_SIZE, N_IMAGES, normalise
from hyperct.training.cache import PreprocessCache, decode
from hyperct.training.crops import crop_images, crop_windows
from hyperct.training.datasets import PhantomDataset, build_dataset
from hyperct.training.heart_geometry import (
    HEART_FIELDS,
    heart_loss,
    mean_r2,
    r2_scores,
    ridge_fit,
    standardised,
    standardised_hearts,
)
from hyperct.training.heart_slices import SLICE_FIELDS, standardised_slices
from hyperct.training.metrics import roc_auc
from hyperct.training.pretrain_config import (  # noqa: F401 - LOSSES and load_pretrain_config: re-exported
    CONFIG_FILE,
    LOSSES,
    PretrainConfig,
    PretrainData,
    load_pretrain_config,
)
from hyperct.training.progress import progress_bar
from hyperct.training.state import join_optimizer_state, rng_state, set_rng_state, split_optimizer_state
from hyperct.training.station_tissue import (
    STATION_FIELDS,
    standardised_station_excess,
    standardised_station_tissue,
)
from hyperct.training.teacher import TEACHER_FIELDS, TeacherError, standardised_teacher, use_teacher

LOG_FILE = "log.jsonl"
STATE_DIR = "last"
PATCH_EMBEDDING = "backbone.embeddings.patch_embeddings."  # (optim.embedding_lr_factor)
CONV_STEM = PATCH_EMBEDDING + "stem."  # (optim.stem_lr_factor)


class PretrainHeads(nn.Module):
    """Token-level and image-level finding classifiers on top of the backbone (discarded after)."""

    def __init__(
        self,
        hidden: int,
        n_findings: int,
        *,
        volume: bool = True,
        bag: bool = False,
        heart: int = 0,
        heart_slices: int = 0,
        stations: int = 0,
        station_excess: int = 0,
        teacher: int = 0,
    ):
        super().__init__()
        self.token = nn.Linear(hidden, n_findings)
        self.image = nn.Linear(hidden, n_findings)
        # Only built when the volume objective is on: an extra layer would shift the random stream
        # and stage 1 (configs/demo_backbone.yaml) would no longer reproduce the shipped backbone.
        self.volume = nn.Linear(hidden, n_findings) if volume else None
        # the bag objective's head on the mean CLS of a bag of images (built last, same reason)
        self.bag = nn.Linear(hidden, n_findings) if bag else None
        # the heart-geometry objective's regression head on the same mean CLS (``heart`` numbers)
        self.heart = nn.Linear(hidden, heart) if heart else None
        # the per-image heart objective's regression head on each image's CLS (``heart_slices`` numbers)
        self.heart_slices = nn.Linear(hidden, heart_slices) if heart_slices else None
        # the per-image station objective's regression head on each image's CLS (``stations`` numbers)
        self.stations = nn.Linear(hidden, stations) if stations else None
        # the per-image station-excess objective's head on each image's CLS (``station_excess`` numbers)
        self.station_excess = nn.Linear(hidden, station_excess) if station_excess else None
        # the teacher objective's head on each image's CLS (the teacher CNN's ``teacher`` features)
        self.teacher = nn.Linear(hidden, teacher) if teacher else None


class PerImage(NamedTuple):
    """One per-image regression objective: each image's CLS regresses its own numbers."""

    method: str  # the dataset method giving a phantom's (55, F) numbers
    standardise: Any  # their standardisation
    fields: tuple  # their names
    key: str  # the log's key
    weight: str  # the ``optim`` field of its loss weight
    what: str  # what it regresses, in messages


# the head's name in ``PretrainHeads`` -> its objective
PER_IMAGE = {
    "heart_slices": PerImage(
        "heart_slices", standardised_slices, SLICE_FIELDS, "heart_slice", "heart_slice_loss_weight", "heart"
    ),
    "stations": PerImage(
        "station_tissue",
        standardised_station_tissue,
        STATION_FIELDS,
        "station",
        "station_loss_weight",
        "station",
    ),
    "station_excess": PerImage(
        "station_excess",
        standardised_station_excess,
        STATION_FIELDS,
        "station_excess",
        "station_excess_loss_weight",
        "station excess",
    ),
    "teacher": PerImage(
        "teacher_features", standardised_teacher, TEACHER_FIELDS, "teacher", "teacher_loss_weight", "teacher"
    ),
}


def image_targets(head: str, ds, i: int) -> np.ndarray:
    """(55, F) standardised per-image numbers of phantom ``i`` of ``ds`` for the head ``head``."""
    obj = PER_IMAGE[head]
    return obj.standardise(getattr(ds, obj.method)(i))


def volume_logits(heads: PretrainHeads, cls: torch.Tensor, n_phantoms: int) -> torch.Tensor:
    """(P, 25) volume logits from the (P*55, D) final CLS features of P whole phantoms (mean over images)."""
    if heads.volume is None:
        raise ValueError("these pretraining heads have no volume head (volume objective off)")
    return heads.volume(cls.reshape(n_phantoms, -1, cls.shape[-1]).mean(dim=1))


def bag_labels(tokens: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(25,) labels of a bag from its images' token labels (n_images, ..., 25): a finding is present
    in the bag when any token of any image in the bag is positive; a bag without a positive token is
    negative for every finding."""
    t = torch.as_tensor(np.asarray(tokens) if isinstance(tokens, np.ndarray) else tokens)
    return t.reshape(-1, t.shape[-1]).amax(dim=0).float()


def bag_logits(heads: PretrainHeads, cls: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """(len(sizes), 25) logits of the bag head on the mean CLS of consecutive bags of ``sizes`` images."""
    if heads.bag is None:
        raise ValueError("these pretraining heads have no bag head (bag objective off)")
    return heads.bag(bag_means(cls, sizes))


def bag_means(cls: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """(len(sizes), D) mean CLS features of consecutive bags of ``sizes`` images."""
    return torch.stack([part.mean(dim=0) for part in torch.split(cls, list(sizes))])


def sample_bag(
    image_pos: np.ndarray,
    rng: np.random.Generator,
    *,
    size_min: int = 8,
    size_max: int = N_IMAGES,
    positive_fraction: float = 0.5,
    include: int | None = None,
) -> np.ndarray:
    """Sorted image indices of one bag. ``image_pos`` (n_images, 25) bool: which findings each image
    has a positive token for.

    The bag size is uniform in [size_min, size_max]. ``ceil(positive_fraction * size)`` images are
    taken among the images with a positive token, finding by finding (a finding present in the
    phantom is picked at random, then one of its images not taken yet), so small findings are seen
    as often as large ones; the rest are drawn uniformly from the remaining images. When the phantom
    has too few positive images for the fraction, the bag shrinks (not below ``size_min``) so the
    fraction still holds where it can; a phantom without any positive token gives an all-negative bag.
    ``include`` (a finding index): the first positive image is one of that finding's (the finding a
    ``drop_one`` twin lacks, so the pair's bags differ in it).
    """
    n = image_pos.shape[0]
    size_max = min(int(size_max), n)
    size = int(rng.integers(int(size_min), size_max + 1))
    positive = np.flatnonzero(image_pos.any(axis=1))
    frac = float(positive_fraction)
    if frac > 0 and positive.size and math.ceil(frac * size) > positive.size:
        size = max(min(size, int(positive.size / frac)), min(int(size_min), n))
    need = min(math.ceil(frac * size), positive.size)
    chosen: list[int] = []
    taken = np.zeros(n, dtype=bool)
    present = list(np.flatnonzero(image_pos.any(axis=0)))
    if include is not None and need > 0 and image_pos[:, include].any():
        options = np.flatnonzero(image_pos[:, include])
        pick = int(options[rng.integers(options.size)])
        chosen.append(pick)
        taken[pick] = True
    while len(chosen) < need and present:
        j = int(rng.integers(len(present)))
        options = np.flatnonzero(image_pos[:, present[j]] & ~taken)
        if options.size == 0:
            present.pop(j)
            continue
        pick = int(options[rng.integers(options.size)])
        chosen.append(pick)
        taken[pick] = True
    rest = np.flatnonzero(~taken)
    if size > len(chosen):
        chosen += [int(i) for i in rng.choice(rest, size=size - len(chosen), replace=False)]
    return np.sort(np.asarray(chosen, dtype=np.int64))


def finding_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    mode: str = "bce",
    pos_weight: torch.Tensor | None = None,
    gamma: float = 2.0,
    known: torch.Tensor | None = None,
    split_negatives: bool = False,
    other: torch.Tensor | None = None,
) -> torch.Tensor:
    """Loss over (..., K) logits and 0/1 labels (``known``: 0/1 of the labels' shape, the labels that
    count in ``balanced`` / ``focal``; default all).

    ``bce``: plain BCE with ``pos_weight`` (stage 1 v0). ``balanced``: per finding, the mean BCE of
    its positives and the mean BCE of its negatives weigh half each (a finding without positives in
    the batch: its negatives' half only), then the mean over findings, so a finding with 3 positive
    tokens weighs as much as one with 3000. ``focal``: the same balancing of focal terms
    (BCE x (1 - p_t)^gamma). ``split_negatives`` (balanced / focal): a finding's negatives that are
    positive for another finding (another lesion: the look-alikes a volume-level maximum trips on)
    weigh half of the negatives' half and the rest the other half, where a batch has both
    (``other``: 0/1 of the labels' shape, which entries hold another finding; default: from the
    labels' other columns).
    """
    k = logits.shape[-1]
    lg = logits.reshape(-1, k)
    y = labels.reshape(-1, k).to(lg.dtype)
    if mode == "bce":
        return F.binary_cross_entropy_with_logits(lg, y, pos_weight=pos_weight)
    ce = F.binary_cross_entropy_with_logits(lg, y, reduction="none")
    if mode == "focal":
        p = torch.sigmoid(lg)
        pt = p * y + (1 - p) * (1 - y)
        ce = ce * (1 - pt).pow(float(gamma))
    elif mode != "balanced":
        raise ValueError(f"unknown loss {mode!r}; use one of {LOSSES}")
    pos, neg = y, 1 - y
    if known is not None:
        mask = known.reshape(-1, k).to(lg.dtype)
        pos, neg = pos * mask, neg * mask
    mean_pos = (ce * pos).sum(0) / pos.sum(0).clamp_min(1)
    if split_negatives:
        if other is None:  # positive for another finding
            other = y.sum(1, keepdim=True) - y > 0
        other = other.reshape(-1, k).to(lg.dtype)
        mean_other = (ce * neg * other).sum(0) / (neg * other).sum(0).clamp_min(1)
        mean_rest = (ce * neg * (1 - other)).sum(0) / (neg * (1 - other)).sum(0).clamp_min(1)
        has_other = ((neg * other).sum(0) > 0).to(lg.dtype)
        mean_neg = has_other * 0.5 * (mean_other + mean_rest) + (1 - has_other) * mean_rest
    else:
        mean_neg = (ce * neg).sum(0) / neg.sum(0).clamp_min(1)
    return (0.5 * (mean_pos + mean_neg)).mean()


def pair_contrast_loss(
    a: torch.Tensor, b: torch.Tensor, finding: int, where: torch.Tensor | None = None
) -> torch.Tensor:
    """Ranking loss between a phantom ``a`` and its ``drop_one`` twin ``b`` for the one ``finding``
    the twin lacks: mean ``softplus(b - a)`` of that finding's logits over the entries ``where``
    (bool, a's entries holding the finding: its positive images or tokens; all when None). The two
    differ only inside the lesion mask, so this asks the heads (and the features under them) to
    score the lesion itself, not the anatomy it usually sits in. 0 when ``where`` selects nothing.
    ``a``, ``b``: (..., K) logits at the same places (same images, same tokens)."""
    da = a[..., finding] - b[..., finding]
    if where is not None:
        da = da[where]
    if da.numel() == 0:
        return a.sum() * 0.0
    return F.softplus(-da).mean()


def forward_heads(
    backbone, heads: PretrainHeads, pixels: torch.Tensor, *, with_cls: bool = False
) -> tuple[torch.Tensor, ...]:
    """(N, G * G, 25) token logits and (N, 25) image logits for (N, 3, 144, 144) images (+ the (N, D)
    CLS); G = 144 / patch size (9 for the demo backbone)."""
    out = backbone(pixel_values=pixels).last_hidden_state
    n_prefix = 1 + backbone.config.num_register_tokens
    res = (heads.token(out[:, n_prefix:]), heads.image(out[:, 0]))
    return res + (out[:, 0],) if with_cls else res


def pair_losses(
    tok_logits: torch.Tensor,
    img_logits: torch.Tensor,
    bag_logits_: torch.Tensor,
    tokens: torch.Tensor,
    sizes: list[int],
    dropped: list[int | None],
) -> torch.Tensor:
    """The pair contrast of a step's ``drop_one`` pairs (bags in the order phantom, twin, phantom,
    twin, ...; ``dropped[j]``: the finding pair j's twin lacks, None when it lacks none): for each
    pair, ``pair_contrast_loss`` on the tokens holding the finding, on the images holding it and on
    the two bags, summed, then the mean over the pairs that have a dropped finding."""
    starts = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    terms = []
    for j, k in enumerate(dropped):
        if k is None:
            continue
        a = slice(starts[2 * j], starts[2 * j + 1])
        b = slice(starts[2 * j + 1], starts[2 * j + 2])
        on_tok = tokens[a][..., k] > 0  # (n, G * G)
        on_img = on_tok.any(dim=1)
        terms.append(
            pair_contrast_loss(tok_logits[a], tok_logits[b], k, on_tok)
            + pair_contrast_loss(img_logits[a], img_logits[b], k, on_img)
            + pair_contrast_loss(bag_logits_[2 * j], bag_logits_[2 * j + 1], k)
        )
    if not terms:
        return img_logits.sum() * 0.0
    return torch.stack(terms).mean()


def token_max_loss(
    tok_logits: torch.Tensor,
    tokens: torch.Tensor,
    *,
    mode: str = "balanced",
    pos_weight: torch.Tensor | None = None,
    gamma: float = 2.0,
) -> torch.Tensor:
    """The token-max objective: ``finding_loss`` of each image's highest token logit per finding
    ((N, T, K) -> (N, K)) against the image label (any positive token). Its gradient reaches only
    the top token of each image and finding: in an image without the finding, its highest-scoring
    negative token."""
    return finding_loss(
        tok_logits.amax(dim=1), tokens.amax(dim=1), mode=mode, pos_weight=pos_weight, gamma=gamma
    )


def masked_bce(logits: torch.Tensor, labels: torch.Tensor, pos_weight: torch.Tensor) -> torch.Tensor:
    """BCE over the labelled entries only (labels -1 = not labelled); 0 when none is labelled."""
    known = labels >= 0
    if not bool(known.any()):
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[known], labels[known].float(), pos_weight=pos_weight)


class _ImageSampler:
    """Draws images (and their token labels) of cached phantoms, deterministically per (seed, epoch)."""

    def __init__(self, ds: PhantomDataset, patch: int = 16):
        self.ds, self.patch = ds, patch

    def images(self, i: int, which: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        stored = self.ds.cache.stored(self.ds._key(i))
        if stored is None:
            self.ds.model_hu(i)
            stored = self.ds.cache.stored(self.ds._key(i))
        slices = np.concatenate([np.arange(3 * n, 3 * n + 3) for n in which])
        hu = torch.from_numpy(decode(np.asarray(stored[slices])))
        pixels = normalise(hu)  # (len(which), 3, 144, 144)
        tokens = torch.from_numpy(self.ds.token_labels(i, self.patch)[which])  # (n, G, G, 25)
        return pixels, tokens.reshape(len(which), -1, tokens.shape[-1]).float()


def _cropped(got: tuple[torch.Tensor, torch.Tensor], windows, crop: int, patch: int):
    """``_ImageSampler.images``' pixels and token labels cut to ``windows`` (none: as they are)."""
    return got if windows is None else crop_images(got[0], got[1], windows, crop, patch)


def echo(msg: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(msg)


def _lr_factor(step: int, total: int, warmup: int, min_factor: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


@torch.no_grad()
def validate(backbone, heads, ds: PhantomDataset, n_phantoms: int, device=None) -> dict:
    """Per-finding AUC of the image head (all images of the first ``n_phantoms`` phantoms) and of the
    token head, and of the token head's maximum over a whole phantom (``volume_token_max_auc``: its
    55 images' tokens, labels from the token masks; what a token feature that tells a finding from
    its look-alikes in a whole volume scores); with the volume objective the volume head (volume labels);
    with the bag objective the bag head on the mean CLS over all 55 images (labels from the masks)."""
    backbone.eval()
    device = torch.device(device or "cpu")
    sampler = _ImageSampler(ds, backbone.config.patch_size)
    img_scores, img_labels, tok_scores, tok_labels, vol_scores = [], [], [], [], []
    bag_scores, vmax_scores, phantom_truth = [], [], []  # truth: from the token masks of all 55 images
    heart_pred, heart_truth = [], []
    with_heart = heads.heart is not None and hasattr(ds, "heart")
    per_image = {
        h: ([], [])
        for h, obj in PER_IMAGE.items()
        if getattr(heads, h) is not None and hasattr(ds, obj.method)
    }  # head -> (predicted, true) per image
    n = min(n_phantoms, len(ds))
    for i in range(n):
        pixels, tokens = sampler.images(i, np.arange(N_IMAGES))
        tok, img, cls = forward_heads(backbone, heads, pixels.to(device), with_cls=True)
        phantom_truth.append(bag_labels(tokens)[None].numpy())
        if heads.volume is not None:
            vol_scores.append(volume_logits(heads, cls, 1).float().cpu().numpy())
        if heads.bag is not None:
            bag_scores.append(bag_logits(heads, cls, [len(cls)]).float().cpu().numpy())
        if with_heart:
            heart_pred.append(heads.heart(cls.mean(dim=0)).float().cpu().numpy())
            heart_truth.append(standardised(ds.heart(i)))
        for h, (pred, truth) in per_image.items():
            pred.append(getattr(heads, h)(cls).float().cpu().numpy())
            truth.append(image_targets(h, ds, i))
        tok, img = tok.float().cpu(), img.float().cpu()
        vmax_scores.append(tok.amax(dim=(0, 1))[None].numpy())
        img_scores.append(img.numpy())
        img_labels.append(tokens.amax(dim=1).numpy())
        tok_scores.append(tok.reshape(-1, tok.shape[-1]).numpy())
        tok_labels.append(tokens.reshape(-1, tokens.shape[-1]).numpy())
    series = [
        ("image_auc", img_scores, img_labels),
        ("token_auc", tok_scores, tok_labels),
        ("volume_token_max_auc", vmax_scores, phantom_truth),
    ]
    if vol_scores:  # volume objective on
        series.append(("volume_auc", vol_scores, [np.asarray(ds.labels[:n])]))
    if bag_scores:  # bag objective on: the whole phantom as one bag
        series.append(("bag_auc", bag_scores, phantom_truth))
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
    if with_heart and n > 1:  # the heart numbers from the mean CLS over all 55 images
        out["heart_r2"] = r2_scores(np.stack(heart_pred), np.stack(heart_truth))
        out["mean_heart_r2"] = mean_r2(out["heart_r2"])
    for h, (pred, truth) in per_image.items():  # each image's numbers, from its own CLS
        key = PER_IMAGE[h].key
        out[f"{key}_r2"] = r2_scores(np.concatenate(pred), np.concatenate(truth), PER_IMAGE[h].fields)
        out[f"mean_{key}_r2"] = mean_r2(out[f"{key}_r2"])
    return out


HEART_FIT_PHANTOMS = 128


@torch.no_grad()
def fit_heart_head(
    backbone, heads: PretrainHeads, ds: PhantomDataset, n: int = HEART_FIT_PHANTOMS, device=None
):
    """Warm start of a new heart head on a trained backbone (linear probing before fine-tuning): its
    weights by ridge regression (``heart_geometry.ridge_fit``) of the standardised heart numbers on the
    mean CLS over all 55 images of the first ``n`` phantoms of ``ds`` (twins skipped), the backbone
    frozen meanwhile. Without it a fresh head learns at the end of a decayed schedule's learning rate,
    and its first gradients into the backbone point nowhere. Returns (in-sample R2 mean, ridge)."""
    feats, targets = [], []
    for i, cls in _whole_volume_cls(backbone, ds, n, device):
        feats.append(cls.mean(axis=0))
        targets.append(standardised(ds.heart(i)))
    return _ridge_into(heads.heart, np.stack(feats), np.stack(targets), HEART_FIELDS)


SLICE_FIT_PHANTOMS = 32


@torch.no_grad()
def fit_image_head(
    backbone, heads: PretrainHeads, head: str, ds: PhantomDataset, n: int = SLICE_FIT_PHANTOMS, device=None
):
    """Warm start of a new per-image head (``PER_IMAGE``), as ``fit_heart_head``: ridge regression of
    each image's standardised numbers on its CLS, all 55 images of the first ``n`` phantoms (twins
    skipped). Returns (in-sample R2 mean, ridge)."""
    feats, targets = [], []
    for i, cls in _whole_volume_cls(backbone, ds, n, device):
        feats.append(cls)
        targets.append(image_targets(head, ds, i))
    return _ridge_into(
        getattr(heads, head), np.concatenate(feats), np.concatenate(targets), PER_IMAGE[head].fields
    )


def fit_slice_head(
    backbone, heads: PretrainHeads, ds: PhantomDataset, n: int = SLICE_FIT_PHANTOMS, device=None
):
    """``fit_image_head`` of the per-image heart head (``heart_slices``)."""
    return fit_image_head(backbone, heads, "heart_slices", ds, n, device)


def _whole_volume_cls(backbone, ds: PhantomDataset, n: int, device=None):
    """(phantom index, (55, D) final CLS) of the first ``n`` phantoms of ``ds`` (twins skipped), the
    backbone in eval mode."""
    backbone.eval()
    device = torch.device(device or "cpu")
    sampler = _ImageSampler(ds, backbone.config.patch_size)
    step = 2 if getattr(ds, "pair", None) else 1
    for i in range(0, min(len(ds), step * n), step):
        pixels, _ = sampler.images(i, np.arange(N_IMAGES))
        cls = backbone(pixel_values=pixels.to(device)).last_hidden_state[:, 0]
        yield i, cls.float().cpu().numpy()


def _ridge_into(head: nn.Linear, x: np.ndarray, y: np.ndarray, names) -> tuple[float | None, float]:
    """Set linear ``head`` to the ridge regression of ``y`` on ``x``; (in-sample mean R2, ridge)."""
    w, b, lam = ridge_fit(x, y)
    head.weight.copy_(torch.from_numpy(w.T.astype(np.float32)))
    head.bias.copy_(torch.from_numpy(b.astype(np.float32)))
    return mean_r2(r2_scores(x @ w + b, y, names)), lam


# --- fresh blocks of phantoms ------------------------------------------------------------------


def block_spec(spec: dict, block: int) -> dict:
    """The training dataset description of block ``block`` (``count`` new seeds per block)."""
    return dict(spec, first_seed=int(spec.get("first_seed", 0)) + int(block) * int(spec["count"]))


def _check_block_seeds(spec: dict, valid_spec: dict | None, block: int) -> None:
    if not valid_spec:
        return
    first = int(spec.get("first_seed", 0))
    lo, hi = first, first + int(spec["count"])
    vlo = int(valid_spec.get("first_seed", 0))
    vhi = vlo + int(valid_spec["count"])
    if lo < vhi and vlo < hi:
        raise ConfigError(
            f"data.train: block {block} of fresh seeds ({lo}..{hi - 1}) reaches the validation seeds "
            f"({vlo}..{vhi - 1})",
            hint="move data.train.first_seed (e.g. to 1000000) so the blocks never meet the validation "
            "or test seeds",
        )


class _Blocks:
    """Training phantoms block by block; the next block is generated in the background (with each
    phantom's per-image heart shares when ``heart_slices``, and station tissue when ``stations``: off
    the training loop)."""

    def __init__(
        self,
        data: PretrainData,
        cache: PreprocessCache,
        source: str | None,
        heart_slices: bool = False,
        stations: bool = False,
    ):
        self.data, self.cache, self.source = data, cache, source
        self.heart_slices = heart_slices
        self.stations = stations
        self.workers = data.prepare_workers
        self.pool = None
        self.pending: tuple[int, PhantomDataset, Any] | None = None

    def _dataset(self, block: int, prepare: bool) -> PhantomDataset:
        dc = self.data
        spec = block_spec(dc.train, block) if dc.fresh_seeds else dc.train
        if dc.fresh_seeds:
            _check_block_seeds(spec, dc.valid, block)
        return build_dataset(
            spec,
            cache=self.cache,
            field="data.train",
            source=self.source,
            progress=prepare,
            workers=max(1, self.workers),
            prepare=prepare,
        )

    def prefetch(self, block: int) -> None:
        """Start generating ``block`` in worker processes (nothing to do without workers)."""
        if self.workers < 1 or self.cache.directory is None or not self.data.fresh_seeds:
            return
        from hyperct.training.datasets.phantoms import (
            _fill_in_worker,
            _heart_slices_in_worker,
            _station_tissue_in_worker,
            worker_pool,
        )

        ds = self._dataset(block, prepare=False)
        state = ds.worker_state()
        jobs = [(_fill_in_worker, (state, i)) for i in range(len(ds)) if not self.cache.contains(ds._key(i))]
        if self.heart_slices:  # (the dataset keeps valid cached shares, recomputes missing or damaged ones)
            jobs += [(_heart_slices_in_worker, (state, i)) for i in range(len(ds))]
        if self.stations:  # (after the phantoms' own jobs: these read their volumes)
            jobs += [(_station_tissue_in_worker, (state, i)) for i in range(len(ds))]
        if self.pool is None:
            self.pool = worker_pool(self.workers)
        self.pending = (block, ds, [self.pool.submit(fn, job) for fn, job in jobs])

    def get(self, block: int) -> PhantomDataset:
        """Block ``block``, ready: waits for its background generation when one is running; what a
        lost worker did not generate (killed, out of memory) is generated here instead of waiting
        for it forever; an error in a phantom's generation is raised."""
        from concurrent.futures import wait
        from concurrent.futures.process import BrokenProcessPool

        if self.pending is not None:
            wanted, futures = self.pending[0] == block, self.pending[2]
            self.pending = None
            try:
                if wanted:
                    for f in futures:
                        f.result()
                else:  # a prefetched block that is no longer wanted
                    for f in futures:
                        f.cancel()
                    wait(futures)
            except BrokenProcessPool:
                echo(
                    "background phantom generation stopped (a worker process died); "
                    "generating the rest of the block here"
                )
                self.pool.shutdown(wait=False, cancel_futures=True)
                self.pool = None
        return self._dataset(block, prepare=True)

    def drop(self, ds: PhantomDataset) -> None:
        for i in range(len(ds)):
            self.cache.delete(ds._key(i))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


# --- resume state ------------------------------------------------------------------------------


def _save_run_state(out: Path, module: nn.Module, optimizer, names: list[list[str]], state: dict) -> None:
    """``out/last``: backbone + heads, AdamW moments per parameter name, the random generators'
    states (``rng.safetensors`` + ``state.json``'s ``rng``), state.json (atomic).

    The generators matter: in training mode the DINOv3 backbone rescales its RoPE coordinates by
    random draws from torch's generator (``pos_embed_rescale``), so a resumed run continues exactly
    where an uninterrupted one would only with the generator state of the end of its last epoch.
    """
    from safetensors.torch import save_file

    with replacing_folder(out / STATE_DIR) as tmp:
        sd = {
            k: v.detach().contiguous().cpu()
            for k, v in module.state_dict().items()
            if not k.endswith("inv_freq")
        }
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        opt = optimizer.state_dict()
        tensors, scalars = split_optimizer_state(opt["state"], [n for group in names for n in group])
        save_file(tensors, str(tmp / "optimizer.safetensors"), metadata={"format": "pt"})
        rng_tensors, rng_meta = rng_state()
        save_file(rng_tensors, str(tmp / "rng.safetensors"), metadata={"format": "pt"})
        groups = [{k: v for k, v in g.items() if k != "params"} for g in opt["param_groups"]]
        doc = dict(
            state,
            format="hyperct-pretrain-state",
            format_version=1,
            param_names=names,
            param_groups=groups,
            optimizer_scalars=scalars,
            rng=rng_meta,
        )
        (tmp / "state.json").write_text(json.dumps(doc, indent=1, default=str) + "\n", encoding="utf-8")


def _load_run_state(out: Path, module: nn.Module, optimizer, names: list[list[str]]) -> dict:
    """Restore the backbone, heads and AdamW state of ``out/last``; returns its state.json (see
    ``_restore_rng`` for the generators)."""
    from hyperct.errors import CheckpointError
    from hyperct.training.state import _read_tensors

    path = out / STATE_DIR / "state.json"
    if not path.is_file():
        raise ConfigError(
            "cannot resume: no last/state.json in the folder",
            path=out,
            hint="resume a folder written by `hyperct pretrain` after at least one epoch",
        )
    doc = json.loads(path.read_text(encoding="utf-8"))
    new_heads = _new_heads(doc.get("param_names"), names)
    if doc.get("format") != "hyperct-pretrain-state" or new_heads is None:
        raise CheckpointError(
            "the resume state does not match this backbone and its heads",
            path=path,
            hint="resume with the configuration the run was started with",
        )
    heads_added = [n for n in new_heads or () if n.startswith("heads.")]
    if heads_added:
        echo(f"resumed with a new objective: its head starts fresh ({', '.join(heads_added)})")
    if new_heads and len(heads_added) < len(new_heads):
        echo("resumed with a conv stem added to the patch embedding: its AdamW moments start at zero")
    doc["new_heads"] = new_heads
    tensors = _read_tensors(out / STATE_DIR / "model.safetensors")
    module.load_state_dict(tensors, strict=False)
    opt_tensors = _read_tensors(out / STATE_DIR / "optimizer.safetensors")
    flat = [n for group in names for n in group]
    state = join_optimizer_state(opt_tensors, doc.get("optimizer_scalars", {}), flat)
    # moments by parameter name; the groups' settings are this run's (a resume may regroup: another
    # embedding_lr_factor, weight_decay), their lr is set before every step
    current = optimizer.state_dict()["param_groups"]
    optimizer.load_state_dict({"state": state, "param_groups": current})
    return doc


def _param_groups(named: list[tuple[str, nn.Parameter]], weight_decay: float, factors: dict[str, float]):
    """AdamW's groups: weights (decayed) and biases / norms / tokens (not), each with its
    parameter ``names`` and ``lr_factor``; ``factors`` maps name prefixes to lr factors (the first
    that matches a name counts): those other than 1 make two more groups each, after the others."""

    def factor(name):
        return next((float(f) for prefix, f in factors.items() if name.startswith(prefix)), 1.0)

    groups = []
    for f in [1.0, *dict.fromkeys(f for f in map(float, factors.values()) if f != 1.0)]:
        members = [(n, p) for n, p in named if factor(n) == f]
        for decayed in (True, False):
            part = [(n, p) for n, p in members if (p.ndim >= 2) == decayed]
            if part or f == 1.0:
                groups.append(
                    {
                        "params": [p for _, p in part],
                        "names": [n for n, _ in part],
                        "weight_decay": weight_decay if decayed else 0.0,
                        "lr_factor": f,
                    }
                )
    return groups


def _new_heads(saved: Any, names: list[list[str]]) -> list[str] | None:
    """The parameters of heads this run adds to a saved one (an objective switched on at a resume:
    they start fresh), and of a conv stem added to its patch embedding (``hyperct.training.run_stem``:
    its weights are in the saved tensors, its moments are not); None when the saved state holds
    anything else than ``names`` without them (another backbone, other heads). The grouping may
    differ (``embedding_lr_factor``)."""
    if not isinstance(saved, list) or not all(isinstance(group, list) for group in saved):
        return None
    known = {n for group in saved for n in group}
    current = [n for group in names for n in group]
    added = [n for n in current if n not in known]
    if any(not n.startswith(("heads.", CONV_STEM)) for n in added) or known - set(current):
        return None
    return added


def _restore_rng(out: Path, doc: dict) -> None:
    """Set the random generators to their state at the end of the saved epoch. A state written before
    they were saved (no ``rng.safetensors``) leaves them as they are: the run goes on, but its RoPE
    draws are not those of an uninterrupted run."""
    from hyperct.training.state import _read_tensors

    path = out / STATE_DIR / "rng.safetensors"
    if "rng" in doc and path.is_file():
        set_rng_state(_read_tensors(path), doc["rng"])


def _record_resumed_config(out: Path, cfg: PretrainConfig, first_epoch: int) -> None:
    """A resume with other settings (``--set``, ``--epochs``) writes them to ``pretrain_config.yaml``,
    so a later resume goes on with them; the settings the earlier epochs ran with are kept beside it
    as ``pretrain_config.before-epoch-N.yaml``."""
    path = out / CONFIG_FILE
    text = cfg.dump()
    old = path.read_text(encoding="utf-8") if path.is_file() else None
    if old == text:
        return
    if old is not None:
        kept = out / f"pretrain_config.before-epoch-{first_epoch}.yaml"
        replace_file(kept, old)
        echo(f"resumed with changed settings: {path} (the settings before epoch {first_epoch}: {kept.name})")
    replace_file(path, text)


def _append_log(out: Path, entry: dict) -> None:
    with open(out / LOG_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, default=str) + "\n")


def _read_log(out: Path, upto: int) -> list[dict]:
    path = out / LOG_FILE
    if not path.is_file():
        return []
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    return [r for r in rows if int(r.get("epoch", 0)) <= upto]


def resume_config(
    out: str | Path, epochs: int | None = None, sets: list[str] | None = None
) -> PretrainConfig:
    """The configuration a run folder was started with (``pretrain_config.yaml``), with new ``epochs``
    and ``--set`` overrides (e.g. more ``data.prepare_workers`` on another machine), validated."""
    path = Path(out) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(
            f"cannot resume: no {CONFIG_FILE} in the folder",
            path=out,
            hint="resume a folder written by `hyperct pretrain` after at least one epoch",
        )
    return PretrainConfig.load(path, {"optim": {"epochs": int(epochs)}} if epochs else None, sets)


# --- the run -----------------------------------------------------------------------------------


def _check_until(until: int | None, first_epoch: int, planned: int, out: Path) -> None:
    """``until`` must leave an epoch to train within the planned schedule."""
    if until is None:
        return
    if until < first_epoch:
        raise ConfigError(
            f"nothing to train: the run has done {first_epoch - 1} epochs, and --until {until} asks to stop "
            "before the next one",
            path=out,
            hint=f"give --until {first_epoch} or later",
        )
    if until > planned:
        raise ConfigError(
            f"--until {until} is past the {planned} epochs the schedule plans",
            path=out,
            hint=f"plan more with --epochs {until} (or more), or stop earlier",
        )


def pretrain_backbone(
    cfg: PretrainConfig | dict,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    source: str | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    until: int | None = None,
) -> Path:
    """Run stage 1 and write the backbone folder (``config.json``, ``model.safetensors``,
    ``pretrain.json``, ``log.jsonl``, ``pretrain_config.yaml`` and the resume state ``last/``).

    ``cfg``: a ``PretrainConfig`` or its mapping (validated here; ``source`` names it in errors).
    ``resume``: continue the run in ``out_dir`` (its saved configuration should be passed as
    ``cfg``, see ``resume_config``); with fresh seeds it goes on with a new block of seeds.
    ``stop_after``: stop after that many epochs of this call (tests: an interruption).
    ``until``: stop after epoch ``until`` (counted from the run's start), the learning-rate schedule
    still planned for ``optim.epochs``: a long run in chunks, or a recorded run replayed segment by
    segment (``scripts/train_demo.sh``).
    """
    cfg = PretrainConfig.coerce(cfg, source=source)
    out = Path(out_dir)
    if resume:
        if not (out / STATE_DIR / "state.json").is_file():
            raise ConfigError(
                "cannot resume: no last/state.json in the folder",
                path=out,
                hint="resume a folder written by `hyperct pretrain` after at least one epoch",
            )
    else:
        _check_until(until, 1, cfg.optim.epochs, out)
        if out.exists() and any(out.iterdir()):
            if not overwrite:
                raise ConfigError(
                    "the output folder already exists", path=out, hint="pass --overwrite to replace it"
                )
            for name in (
                STATE_DIR,
                LOG_FILE,
                CONFIG_FILE,
                "pretrain.json",
                "config.json",
                "model.safetensors",
            ):
                p = out / name
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    seed = cfg.seed
    torch.manual_seed(seed)
    oc, dc = cfg.optim, cfg.data
    device = resolve_device(cfg.device)
    cache = (
        PreprocessCache(dc.cache_dir, dc.cache_dtype, compress=dc.cache_compress)
        if dc.cache_dir
        else PreprocessCache(None)
    )
    workers = max(1, dc.prepare_workers)
    bag_mode = oc.bag
    fresh = dc.fresh_seeds
    # per-image objectives on (``PER_IMAGE``): head -> loss weight
    image_w = {h: float(getattr(oc, obj.weight)) for h, obj in PER_IMAGE.items()}
    image_w = {h: w for h, w in image_w.items() if w > 0}
    if "teacher" in image_w:  # the configuration asks optim.teacher beside the weight
        try:
            use_teacher(oc.teacher)
        except TeacherError as exc:
            raise ConfigError(f"optim.teacher: {exc}", path=source) from exc
    blocks = _Blocks(
        dc,
        cache,
        source,
        heart_slices="heart_slices" in image_w,
        stations="stations" in image_w or "station_excess" in image_w,
    )
    try:
        if fresh:
            train = None  # the first block is chosen below (a resumed run starts a new one)
        else:
            train = build_dataset(
                dc.train, cache=cache, field="data.train", source=source, progress=True, workers=workers
            )
        valid = None
        if dc.valid:  # only the phantoms validate() reads: valid.phantoms of them, not all of data.valid
            wanted = dict(dc.valid, count=min(int(dc.valid["count"]), cfg.valid.phantoms))
            valid = build_dataset(
                wanted, cache=cache, field="data.valid", source=source, progress=True, workers=workers
            )
        from hyperct.findings import catalogue

        n_findings = len(catalogue())
        if resume:  # the folder holds the backbone of its last epoch (the state below overwrites it)
            torch.manual_seed(seed)
            backbone = load_backbone(out)
        elif cfg.init:
            # reseed as build_backbone(seed=...) does below: the heads' initialisation must not depend
            # on whether the phantoms above were generated or read from the cache
            torch.manual_seed(seed)
            backbone = load_backbone(cfg.init)  # BackboneWeightsError naming the folder if it is wrong
            if cfg.init_extra_layers:
                backbone = deepen_backbone(backbone, cfg.init_extra_layers, seed=seed)
            if cfg.init_patch_size and cfg.init_patch_size != backbone.config.patch_size:
                try:
                    backbone = repatch_backbone(backbone, cfg.init_patch_size)
                except ValueError as exc:
                    raise ConfigError(
                        f"init_patch_size: {exc} (the init backbone's patch)", path=cfg.init
                    ) from None
            if cfg.init_hu_windows:
                if getattr(backbone.config, "hu_windows", None):
                    raise ConfigError(
                        "init_hu_windows: the init backbone has HU windows already; drop init_hu_windows",
                        path=cfg.init,
                    )
                backbone = add_windows(backbone, cfg.init_hu_windows)
        else:
            backbone = build_backbone(cfg.backbone, seed=seed)
        backbone.embeddings.mask_token.requires_grad_(False)  # unused (no masked-image modelling)
        patch = int(backbone.config.patch_size)
        crop = int(oc.crop_size) // patch  # tokens a side (0: whole images)
        if oc.crop_size and (oc.crop_size % patch or crop > IMAGE_SIZE // patch):
            raise ConfigError(
                f"optim.crop_size: {oc.crop_size} pixels is not a whole number of the backbone's "
                f"{patch}-pixel patches; use a multiple of {patch} up to {IMAGE_SIZE}",
                path=str(out / CONFIG_FILE) if resume else None,
            )
        heart_w = float(oc.heart_loss_weight)
        heads = PretrainHeads(
            backbone.config.hidden_size,
            n_findings,
            volume=oc.volume,
            bag=bag_mode,
            heart=len(HEART_FIELDS) if heart_w > 0 else 0,
            **{h: len(PER_IMAGE[h].fields) if h in image_w else 0 for h in PER_IMAGE},
        )
        module = nn.ModuleDict({"backbone": backbone, "heads": heads}).to(device)
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        params = [p for _, p in named]  # (this order: the gradient-norm clipping sums in it)
        stem = oc.embedding_lr_factor if oc.stem_lr_factor is None else oc.stem_lr_factor
        factors = {CONV_STEM: stem, PATCH_EMBEDDING: oc.embedding_lr_factor}
        groups = _param_groups(named, float(oc.weight_decay), factors)
        names = [g.pop("names") for g in groups]
        optimizer = torch.optim.AdamW(groups, lr=float(oc.lr))
        per_step, per_phantom = oc.phantoms_per_step, oc.images_per_phantom
        units = int(dc.train["count"])  # seeds per epoch (pairs in a paired dataset)
        steps_per_epoch = math.ceil(units / per_step)
        tok_pw = torch.tensor(float(oc.token_pos_weight), device=device)
        img_pw = torch.tensor(float(oc.image_pos_weight), device=device)
        vol_w = float(oc.volume_loss_weight)
        vol_pw = torch.tensor(float(oc.volume_pos_weight), device=device)
        bag_w = float(oc.bag_loss_weight)
        pair_w = float(oc.pair_loss_weight)
        tmax_w = float(oc.token_max_loss_weight)
        split_neg = bool(oc.split_negatives)
        mode, gamma = oc.loss, float(oc.focal_gamma)
        log: list[dict] = []
        step, first_epoch, block, epoch_in_block = 0, 1, 0, 0
        if resume:
            doc = _load_run_state(out, module, optimizer, names)
            step, first_epoch = int(doc["step"]), int(doc["epoch"]) + 1
            _check_until(until, first_epoch, oc.epochs, out)  # (before the old block is dropped)
            # fresh seeds: a new block, never the one it stopped in (without them the block number
            # only seeds the bag draws, which go on as in an uninterrupted run)
            block, epoch_in_block = int(doc["next_block"] if fresh else doc["block"]), 0
            if fresh and not dc.keep_blocks:  # the block it stopped in is not used again
                blocks.drop(blocks._dataset(int(doc["block"]), prepare=False))
            log = _read_log(out, first_epoch - 1)
            (out / LOG_FILE).write_text(
                "".join(json.dumps(e, default=str) + "\n" for e in log), encoding="utf-8"
            )
            _record_resumed_config(out, cfg, first_epoch)
        else:
            (out / CONFIG_FILE).write_text(cfg.dump(), encoding="utf-8")
        epochs = oc.epochs
        total = steps_per_epoch * epochs
        start = time.time()
        if resume:  # (here: what follows draws as it would have after the saved epoch)
            _restore_rng(out, doc)
        if fresh and first_epoch <= epochs:
            train = blocks.get(block)
        # a new heart head on a trained backbone (switched on at a resume, or a run from ``init``)
        fresh_heart = "heads.heart.weight" in doc["new_heads"] if resume else bool(cfg.init)
        if heads.heart is not None and fresh_heart and train is not None:
            r2, lam = fit_heart_head(backbone, heads, train, device=device)
            echo(f"new heart head fitted to the backbone's mean CLS (ridge {lam}): in-sample R2 {r2}")
        for h, obj in PER_IMAGE.items():
            fresh_head = f"heads.{h}.weight" in doc["new_heads"] if resume else bool(cfg.init)
            if getattr(heads, h) is not None and fresh_head and train is not None:
                r2, lam = fit_image_head(backbone, heads, h, train, device=device)
                echo(
                    f"new per-image {obj.what} head fitted to the backbone's CLS (ridge {lam}): in-sample R2 {r2}"
                )
        done = 0
        for epoch in range(first_epoch, epochs + 1):
            if fresh and epoch_in_block == dc.block_epochs:
                old = train
                block, epoch_in_block = block + 1, 0
                train = blocks.get(block)
                if not dc.keep_blocks:
                    blocks.drop(old)
            if fresh and epoch_in_block == 0 and epoch + dc.block_epochs <= epochs:
                blocks.prefetch(block + 1)  # generated while this block's epochs train
            sampler = _ImageSampler(train, backbone.config.patch_size)
            module.train()
            encoder_layers(backbone)  # (structure check: a DINOv3 ViT)
            if bag_mode or fresh:
                rng = np.random.default_rng([seed, epoch, block, 0xBA6])
            else:
                rng = np.random.default_rng([seed, epoch])  # stage 1 v0: its own stream, unchanged
            pairs = bool(getattr(train, "pair", None))
            order = rng.permutation(units)
            sums: dict[str, list[float]] = {
                k: []
                for k in (
                    "loss",
                    "token",
                    "image",
                    "token_max",
                    "bag",
                    "volume",
                    "pair",
                    "heart",
                    *PER_IMAGE,
                )
            }
            n_images = n_positive_images = n_bags = n_positive_bags = 0
            bar = progress_bar(range(steps_per_epoch), desc=f"pretrain epoch {epoch}/{epochs}", unit="step")
            for s in bar:
                idx = order[s * per_step : (s + 1) * per_step]
                sizes: list[int] = []
                members: list[int] = []  # the phantom of each bag (pairs: phantom, twin, ...)
                dropped: list[int | None] = []  # per pair: the finding the drop_one twin lacks
                # (phantom, its images) of the batch, in order: where the per-image targets come from
                sources: list[tuple[int, np.ndarray]] = []
                if bag_mode:
                    batch = []
                    for u in idx:
                        i = 2 * int(u) if pairs else int(u)
                        grid = train.token_labels(i, backbone.config.patch_size)  # (55, G, G, 25)
                        include = None
                        if pairs and train.pair == "drop_one":  # the finding the twin lacks
                            differ = np.flatnonzero(train.labels[i] != train.labels[train.pair_of(i)])
                            include = int(differ[0]) if differ.size == 1 else None
                        dropped.append(include)
                        which = sample_bag(
                            grid.any(axis=(1, 2)),
                            rng,
                            size_min=oc.bag_min,
                            size_max=oc.bag_max,
                            positive_fraction=float(oc.positive_fraction),
                            include=include,
                        )
                        windows = crop_windows(grid[which], crop, rng) if crop else None
                        batch.append(_cropped(sampler.images(i, which), windows, crop, patch))
                        sizes.append(len(which))
                        members.append(i)
                        sources.append((i, which))
                        if pairs:  # the twin: the very same image indices (and crop windows)
                            twin = sampler.images(train.pair_of(i), which)
                            batch.append(_cropped(twin, windows, crop, patch))
                            sizes.append(len(which))
                            members.append(train.pair_of(i))
                            sources.append((train.pair_of(i), which))
                else:
                    batch = []
                    for i in idx:
                        which = np.sort(rng.choice(N_IMAGES, size=min(per_phantom, N_IMAGES), replace=False))
                        got = sampler.images(int(i), which)
                        windows = None
                        if crop:
                            grid = got[1].reshape(len(which), IMAGE_SIZE // patch, IMAGE_SIZE // patch, -1)
                            windows = crop_windows(grid.numpy() > 0, crop, rng)
                        batch.append(_cropped(got, windows, crop, patch))
                        sources.append((int(i), which))
                pixels = torch.cat([b[0] for b in batch]).to(device)
                tokens = torch.cat([b[1] for b in batch]).to(device)
                for group in optimizer.param_groups:
                    group["lr"] = (
                        float(oc.lr)
                        * group["lr_factor"]
                        * _lr_factor(step, total, oc.warmup_steps, float(oc.min_factor))
                    )
                tok_logits, img_logits, cls = forward_heads(backbone, heads, pixels, with_cls=True)
                image_truth = tokens.amax(dim=1)
                tok_loss = finding_loss(
                    tok_logits, tokens, mode=mode, pos_weight=tok_pw, gamma=gamma, split_negatives=split_neg
                )
                img_loss = finding_loss(img_logits, image_truth, mode=mode, pos_weight=img_pw, gamma=gamma)
                loss = tok_loss + img_loss
                if tmax_w > 0:
                    t_loss = token_max_loss(tok_logits, tokens, mode=mode, pos_weight=img_pw, gamma=gamma)
                    loss = loss + tmax_w * t_loss
                    sums["token_max"].append(float(t_loss.detach()))
                if vol_w > 0:
                    vol_labels = torch.from_numpy(np.asarray(train.labels[idx], dtype=np.int64)).to(device)
                    vol_loss = masked_bce(volume_logits(heads, cls, len(idx)), vol_labels, vol_pw)
                    loss = loss + vol_w * vol_loss
                    sums["volume"].append(float(vol_loss.detach()))
                if bag_mode:
                    truth = torch.stack([bag_labels(b[1]) for b in batch]).to(device)
                    b_logits_all = bag_logits(heads, cls, sizes)
                    b_loss = finding_loss(b_logits_all, truth, mode=mode, pos_weight=img_pw, gamma=gamma)
                    loss = loss + bag_w * b_loss
                    sums["bag"].append(float(b_loss.detach()))
                    if pair_w > 0 and pairs:
                        p_loss = pair_losses(tok_logits, img_logits, b_logits_all, tokens, sizes, dropped)
                        loss = loss + pair_w * p_loss
                        sums["pair"].append(float(p_loss.detach()))
                    if heart_w > 0:
                        target = torch.from_numpy(standardised_hearts(train, members))
                        h_loss = heart_loss(heads.heart(bag_means(cls, sizes)), target.to(device))
                        loss = loss + heart_w * h_loss
                        sums["heart"].append(float(h_loss.detach()))
                    n_bags += len(sizes)
                    n_positive_bags += int((truth.amax(dim=1) > 0).sum())
                for h, w in image_w.items():
                    rows = [image_targets(h, train, i)[which] for i, which in sources]
                    target = torch.from_numpy(np.concatenate(rows))
                    i_loss = heart_loss(getattr(heads, h)(cls), target.to(device))
                    loss = loss + w * i_loss
                    sums[h].append(float(i_loss.detach()))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if oc.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, float(oc.grad_clip))
                optimizer.step()
                sums["loss"].append(float(loss.detach()))
                sums["token"].append(float(tok_loss.detach()))
                sums["image"].append(float(img_loss.detach()))
                drawn = image_truth.amax(dim=1) > 0
                if pairs:  # the positive fraction of the drawn phantoms' images (twins mirror them)
                    drawn = torch.cat([d for j, d in enumerate(torch.split(drawn, sizes)) if j % 2 == 0])
                n_images += int(drawn.numel())
                n_positive_images += int(drawn.sum())
                step += 1
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{np.mean(sums['loss'][-50:]):.4f}")
            entry: dict[str, Any] = {
                "epoch": epoch,
                "step": step,
                "lr": round(float(optimizer.param_groups[0]["lr"]), 8),
                "loss": round(float(np.mean(sums["loss"])), 5),
                "token_loss": round(float(np.mean(sums["token"])), 5),
                "image_loss": round(float(np.mean(sums["image"])), 5),
                "positive_image_fraction": round(n_positive_images / max(n_images, 1), 4),
                "seconds": round(time.time() - start, 1),
            }
            if bag_mode:
                entry["bag_loss"] = round(float(np.mean(sums["bag"])), 5)
                entry["positive_bag_fraction"] = round(n_positive_bags / max(n_bags, 1), 4)
            if sums["token_max"]:
                entry["token_max_loss"] = round(float(np.mean(sums["token_max"])), 5)
            if sums["pair"]:
                entry["pair_loss"] = round(float(np.mean(sums["pair"])), 5)
            if sums["heart"]:
                entry["heart_loss"] = round(float(np.mean(sums["heart"])), 5)
            for h, obj in PER_IMAGE.items():
                if sums[h]:
                    entry[f"{obj.key}_loss"] = round(float(np.mean(sums[h])), 5)
            if vol_w > 0:
                entry["volume_loss"] = round(float(np.mean(sums["volume"])), 5)
            if fresh:
                entry["block"] = block
                entry["seeds"] = [int(train.seeds[0]), int(train.seeds[-1])]
            if valid is not None:
                entry["valid"] = validate(backbone, heads, valid, cfg.valid.phantoms, device=device)
            log.append(entry)
            epoch_in_block += 1
            msg = f"pretrain epoch {epoch}: loss {entry['loss']:.4f}"
            if valid is not None:
                v = entry["valid"]
                msg += f"  image AUC {v['mean_image_auc']}  token AUC {v['mean_token_auc']}"
                if vol_w > 0:
                    msg += f"  volume AUC {v['mean_volume_auc']}"
                if bag_mode:
                    msg += f"  bag AUC {v['mean_bag_auc']}"
                if "mean_heart_r2" in v:
                    msg += f"  heart R2 {v['mean_heart_r2']}"
                if "mean_heart_slice_r2" in v:
                    msg += f"  per-image heart R2 {v['mean_heart_slice_r2']}"
                if "mean_station_r2" in v:
                    msg += f"  per-image station R2 {v['mean_station_r2']}"
                if "mean_station_excess_r2" in v:
                    msg += f"  per-image station excess R2 {v['mean_station_excess_r2']}"
            echo(msg)
            # after every epoch: the backbone so far, the log line and the resume state
            backbone.eval()
            save_backbone(backbone.cpu(), out)
            backbone.to(device)
            _append_log(out, entry)
            _save_run_state(
                out,
                module,
                optimizer,
                names,
                {
                    "epoch": epoch,
                    "step": step,
                    "block": block,
                    "next_block": block + 1,
                    "epochs_planned": epochs,
                    "saved": time.strftime("%Y-%m-%dT%H:%M:%S"),
                },
            )
            done += 1
            if (stop_after is not None and done >= stop_after) or (until is not None and epoch >= until):
                break
        if fresh and train is not None and not dc.keep_blocks:
            blocks.drop(train)  # never used again: a resumed run starts a new block
    finally:
        blocks.close()

    backbone.eval()
    save_backbone(backbone.cpu(), out)
    report = {
        "stage": "backbone pretraining on phantom slices (token-level finding masks"
        + (", bag objective on the mean CLS" if bag_mode else "")
        + ")",
        "backbone": config_to_dict(backbone.config),
        "config": cfg.to_dict(),
        "train": train.describe() if train is not None else None,
        "valid": valid.describe() if valid is not None else None,
        "log": log if not resume else _read_log(out, 10**9),
    }
    (out / "pretrain.json").write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    return out
