"""A per-image CNN teacher for stage 1: its image features, which the ViT's CLS is asked to regress.

A small CNN reading each model image alone, its features averaged over the 55 images and read
linearly (HyperCT's way of reading a backbone, ``benchmarks/reading_cnn_oracle.py``) learns in minutes
on two CPU cores what the demo ViT has not learned in hours: from the same phantoms, the
mean-feature probe of LV systolic function and ventricular enlargement 0.83 / 0.93 against the ViT's
0.72 / 0.73 (model card). Stage 1's ``optim.teacher_loss_weight`` hands that on, as a convnet
teacher does for a data-hungry ViT (DeiT): a linear head on each image's CLS regresses the teacher's
feature vector of the same image (standardised), so that a mean CLS holding them holds, linearly,
what the teacher's mean feature holds.

The teacher's input is the model grid's HU (``PhantomDataset.model_hu``) reduced to each RGB image's
three slices averaged and 2 x 2 pixels averaged (72 x 72), as two channels: HU / 1000 and a
soft-tissue ramp around the blood / myocardium contrast. A teacher folder holds
``teacher.safetensors`` (the conv weights, the features' mean and spread over its training images)
and ``teacher.json``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

BLOOD_MYO_HU = 45.0  # midway between the phantom's blood (38 HU) and myocardium (52 HU)
SOFT_RAMP_HU = 60.0  # half-width of the soft-tissue channel's ramp
WIDTH = 16  # the teacher's first conv width (its features: 2 x 4 x WIDTH)
N_FEATURES = 8 * WIDTH
TEACHER_FIELDS = tuple(f"t{k:03d}" for k in range(N_FEATURES))
WEIGHTS_FILE = "teacher.safetensors"
INFO_FILE = "teacher.json"
MIN_SPREAD = 1e-3  # a feature that hardly varies over the training images is left out of the target


def reduced_volume(hu: np.ndarray) -> np.ndarray:
    """(165, H, W) model-grid HU -> (2, 55, H/2, W/2) float32: the mean of each RGB image's 3 slices
    and of 2 x 2 pixels, as HU / 1000 and as ``clip((HU - 45) / 60, -1, 1)`` of that mean."""
    z, h, w = hu.shape
    m = hu.reshape(z // 3, 3, h // 2, 2, w // 2, 2).mean(axis=(1, 3, 5), dtype=np.float32)
    soft = np.clip((m - BLOOD_MYO_HU) / SOFT_RAMP_HU, -1.0, 1.0)
    return np.stack([m / 1000.0, soft]).astype(np.float32)


def image_cnn(width: int = WIDTH) -> nn.Sequential:
    """Four 3x3 conv blocks (BatchNorm, ReLU, stride 2) on one 2-channel image."""
    chans = [2, width, 2 * width, 4 * width, 4 * width]
    layers: list[nn.Module] = []
    for a, b in zip(chans[:-1], chans[1:]):
        layers += [nn.Conv2d(a, b, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU()]
    return nn.Sequential(*layers)


def image_features(cnn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, 2, Z, H, W) -> (N, Z, 2 * channels): each image's feature, the mean and the maximum of the
    CNN's last map over its pixels, computed from that image alone."""
    n, c, z, h, w = x.shape
    f = cnn(x.permute(0, 2, 1, 3, 4).reshape(n * z, c, h, w))
    return torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1).view(n, z, -1)


class TeacherError(ValueError):
    """A teacher folder that cannot be used (the message says why and what to do)."""


@dataclass
class Teacher:
    cnn: nn.Sequential
    mean: np.ndarray
    spread: np.ndarray
    identity: str  # the weights file's digest: names the features cached beside each phantom

    @torch.no_grad()
    def features(self, hu: np.ndarray) -> np.ndarray:
        """(55, N_FEATURES) float32: the teacher's raw feature of each model image of ``hu``."""
        x = torch.from_numpy(reduced_volume(np.asarray(hu, dtype=np.float32)))[None]
        return image_features(self.cnn, x)[0].numpy().astype(np.float32)

    def standardise(self, features: np.ndarray) -> np.ndarray:
        """Features in spreads of the teacher's training images; near-constant ones set to 0."""
        z = (np.asarray(features, dtype=np.float64) - self.mean) / np.maximum(self.spread, MIN_SPREAD)
        return np.where(self.spread >= MIN_SPREAD, z, 0.0).astype(np.float32)


@torch.no_grad()
def save_teacher(
    cnn: nn.Module, volumes: torch.Tensor, folder: str | Path, info: dict, batch: int = 8
) -> Path:
    """Keep ``cnn`` (``image_cnn``) with the mean and spread of its features over every image of
    ``volumes`` ((N, 2, 55, 72, 72), its training volumes) in ``folder``."""
    from safetensors.torch import save_file

    cnn.eval()
    feats = torch.cat(
        [image_features(cnn, volumes[a : a + batch].float()) for a in range(0, len(volumes), batch)]
    )
    feats = feats.reshape(-1, feats.shape[-1]).double()
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"cnn.{k}": v.contiguous() for k, v in cnn.state_dict().items()}
    tensors["mean"] = feats.mean(0).float()
    tensors["spread"] = feats.std(0).float()
    save_file(tensors, str(out / WEIGHTS_FILE))
    (out / INFO_FILE).write_text(
        json.dumps({"width": WIDTH, "n_features": N_FEATURES, "trained": info}, indent=2)
    )
    return out


def load_teacher(folder: str | Path) -> Teacher:
    """The teacher kept in ``folder`` by ``save_teacher`` (untrusted: every tensor's name, shape and
    values are checked)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise TeacherError(
            f"no stage-1 teacher at {folder}: {WEIGHTS_FILE} is missing; make one with "
            "`python benchmarks/reading_cnn_oracle.py --save FOLDER` or set optim.teacher_loss_weight: 0"
        )
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise TeacherError(f"stage-1 teacher {path} cannot be read ({exc}); make it again") from exc
    cnn = image_cnn(WIDTH)
    want = {f"cnn.{k}": v.shape for k, v in cnn.state_dict().items()}
    want.update(mean=(N_FEATURES,), spread=(N_FEATURES,))
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if set(got) != set(want) or any(tuple(want[k]) != got[k] for k in want):
        raise TeacherError(
            f"stage-1 teacher {path} does not hold the teacher network (width {WIDTH}): "
            f"unexpected or missing tensors {sorted(set(got) ^ set(want))[:4]} or shapes; make it again"
        )
    if not all(torch.isfinite(v.float()).all() for v in tensors.values()):
        raise TeacherError(f"stage-1 teacher {path} holds non-finite numbers; make it again")
    cnn.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("cnn.")})
    cnn.eval()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return Teacher(cnn, tensors["mean"].double().numpy(), tensors["spread"].double().numpy(), digest)


_ACTIVE: dict[str, Teacher] = {}


def use_teacher(folder: str | Path) -> Teacher:
    """Load the teacher in ``folder`` and make it the one ``active`` returns (stage 1 calls this when
    ``optim.teacher_loss_weight`` > 0)."""
    _ACTIVE["teacher"] = load_teacher(folder)
    return _ACTIVE["teacher"]


def active() -> Teacher:
    """The teacher ``use_teacher`` loaded last."""
    if "teacher" not in _ACTIVE:
        raise TeacherError("no stage-1 teacher loaded: set optim.teacher to a teacher folder")
    return _ACTIVE["teacher"]


def standardised_teacher(features: np.ndarray) -> np.ndarray:
    """``Teacher.standardise`` of the active teacher (the per-image objective's targets)."""
    return active().standardise(features)


def teacher_cache_name() -> str:
    """The cache array name of the active teacher's features beside each phantom."""
    return f"teacher_{active().identity}"
