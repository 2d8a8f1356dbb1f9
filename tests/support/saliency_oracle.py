"""An oracle for saliency methods: a tiny HyperCT trained to answer "is there a bright square?".

Each scan is 4 images of 3 x 48 x 48 (3 x 3 tokens) of noise with a dark square (a distractor every
scan has) and, in positives, a bright square inside one token. The model's evidence is, by
construction, the bright square: removing it (the scan's "normal twin") turns a positive into a
negative. Labels are smoothed (0.1 / 0.9) so that the model is not saturated (see
``test_saliency_oracle``). Training takes ~15-30 s on one CPU thread and is seeded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.support.models import tiny_model

N_IMAGES = 4
SIDE = 3  # tokens per image side (48 px / 16)
AMPLITUDE = 1.5
NOISE = 0.5


def _square(x: torch.Tensor, b: int, pos: tuple[int, int, int], value: float) -> None:
    i, r, c = pos
    x[b, i, :, 16 * r + 4 : 16 * r + 12, 16 * c + 4 : 16 * c + 12] += value


def _position(g: torch.Generator) -> tuple[int, int, int]:
    return (
        int(torch.randint(0, N_IMAGES, (1,), generator=g)),
        int(torch.randint(0, SIDE, (1,), generator=g)),
        int(torch.randint(0, SIDE, (1,), generator=g)),
    )


def scans(g: torch.Generator, n: int, *, lesion: bool = True):
    """``n`` scans (n, 4, 3, 48, 48); the bright squares' (image, row, col); their normal twins."""
    x = torch.randn(n, N_IMAGES, 3, 48, 48, generator=g) * NOISE
    for b in range(n):
        _square(x, b, _position(g), -AMPLITUDE)
    twins = x.clone()
    positions = []
    if lesion:
        for b in range(n):
            pos = _position(g)
            _square(x, b, pos, AMPLITUDE)
            positions.append(pos)
    return x, positions, twins


def move_lesion(x: torch.Tensor, old: tuple[int, int, int], new: tuple[int, int, int]) -> torch.Tensor:
    """The same scan (one scan, (1, 4, 3, 48, 48)) with its bright square moved from ``old`` to ``new``."""
    y = x.clone()
    _square(y, 0, old, -AMPLITUDE)
    _square(y, 0, new, AMPLITUDE)
    return y


def train_oracle(steps: int = 200, seed: int = 0):
    torch.manual_seed(seed)
    model = tiny_model(seed=seed, random_lora=False)
    model.set_backbone_trainable(True)
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        for _ in range(steps):
            pos, _, _ = scans(g, 8)
            neg, _, _ = scans(g, 8, lesion=False)
            x = torch.cat([pos, neg])
            y = torch.cat([torch.full((8,), 0.9), torch.full((8,), 0.1)])  # smoothed: no saturated logits
            loss = F.binary_cross_entropy_with_logits(
                model(x, torch.zeros(16, dtype=torch.long), paired=True), y
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.set_backbone_trainable(False)
    model.clear_factor_cache()
    return model.eval()
