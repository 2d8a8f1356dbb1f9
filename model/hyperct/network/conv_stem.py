"""A convolutional stem beside the linear patch embedding: a small CNN's reading of each patch.

Why (issue 18): the demo's LV findings (reduced LV systolic function, ventricular enlargement) stay at
0.72-0.73 in the gate probe of every ViT backbone. A CNN that reads a volume as HyperCT does (each
image alone, mean over the 55 images, linear read-out; ``benchmarks/reading_cnn_oracle.py``) learns
them (0.90 / 0.89 after 20 epochs) when its first step is three stride-2 3 x 3 conv blocks to the
ViT's 9 x 9 token grid, and does not (0.64 / 0.72) when that step is the ViT's linear embedding of
each patch, the rest of the network and the input (HU and a narrow blood / myocardium window) the
same (``--stem convpatch`` / ``--stem patch``). So a linear patch embedding is where the ViT loses
them, as with "early convolutions" for ViTs in general (Xiao et al., 2021).

``ConvStem`` reads the windowed input (the image channels and every HU window's ramps,
``hyperct.network.windows``) averaged over 2 x 2 pixels, through three stride-2 3 x 3 convolutions
(GELU; no normalisation, so nothing depends on the batch or on train/eval mode) and a 1 x 1
convolution to the hidden size: one vector per 16 x 16 patch, added to the patch embedding's. The
1 x 1 starts at zero, so a backbone given a stem computes exactly what it did (``add_conv_stem``);
training grows it. It runs once per image (the LoRA of a HyperCT task does not touch the patch
embedding), ~6 M multiply-adds per 144 x 144 image for width 16 and four windows (the windowed linear
embedding: ~30 M); a stage-1 step on 2 CPU cores takes ~25 % longer with it.

A backbone has a stem when its config has ``conv_stem`` (the first block's width; our extension of
the DINOv3 config, next to ``hu_windows``, which it needs).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

STEM_BLOCKS = 3  # stride-2 blocks after the 2 x 2 average: 16 x 16 patches -> one vector
STEM_PATCH = 2 * 2**STEM_BLOCKS
MIN_WIDTH, MAX_WIDTH = 4, 128  # bounds for untrusted configs


def check_stem_width(width, patch: int) -> int:
    """``width`` as an int; ValueError naming what is wrong (a bool, out of range, a patch size the
    stem does not reduce to one vector)."""
    if isinstance(width, bool) or not isinstance(width, int) or not MIN_WIDTH <= width <= MAX_WIDTH:
        raise ValueError(
            f"conv_stem must be a whole number of channels {MIN_WIDTH}..{MAX_WIDTH}, got {width!r}"[:200]
        )
    if patch != STEM_PATCH:
        raise ValueError(f"conv_stem needs patch_size {STEM_PATCH}, the backbone's is {patch}")
    return width


class ConvStem(nn.Module):
    """(N, C, H, W) windowed input -> (N, out, H / 16, W / 16): a 2 x 2 average, three stride-2
    3 x 3 conv blocks (``width``, 2 ``width``, 4 ``width`` channels, GELU) and a 1 x 1 conv to ``out``
    (``proj``, zero at first)."""

    def __init__(self, in_channels: int, width: int, out_channels: int):
        super().__init__()
        chans = [in_channels] + [width * 2**i for i in range(STEM_BLOCKS)]
        self.blocks = nn.ModuleList(
            nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(chans[:-1], chans[1:])
        )
        self.proj = nn.Conv2d(chans[-1], out_channels, 1)
        self.width = width
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, windowed: torch.Tensor) -> torch.Tensor:
        p = STEM_PATCH  # (the pixels past the last whole patch: left out, as the patch embedding does)
        h, w = windowed.shape[-2] // p * p, windowed.shape[-1] // p * p
        x = F.avg_pool2d(windowed[..., :h, :w], 2)
        for conv in self.blocks:
            x = F.gelu(conv(x))
        return self.proj(x)


def add_conv_stem(backbone, width: int, *, seed: int | None = None):
    """A copy of a windowed ``backbone`` with a conv stem of ``width`` that computes exactly what it
    did (the stem's output projection at zero; its blocks initialised as PyTorch does, from ``seed``
    when given)."""
    emb = backbone.embeddings.patch_embeddings
    if not getattr(backbone.config, "hu_windows", None):
        raise ValueError(
            "a conv stem reads the HU windows: give the backbone windows first (init_hu_windows)"
        )
    if getattr(emb, "stem", None) is not None:
        raise ValueError("this backbone has a conv stem already")
    check_stem_width(width, int(emb.kernel_size[0]))
    out = copy.deepcopy(backbone)
    new = out.embeddings.patch_embeddings
    new.stem = new_stem(new.in_channels, width, new.out_channels, seed=seed).to(
        device=new.weight.device, dtype=new.weight.dtype
    )
    out.config.conv_stem = width
    return out


def widen_stem_input(weight: torch.Tensor, old: int, new: int, channels: int = 3) -> torch.Tensor:
    """The stem's first convolution ``weight`` (out, ``channels`` * (1 + ``old``), 3, 3) for a backbone
    whose ``old`` HU windows become ``new`` >= ``old`` (appended after the others; the stem reads the
    image channels, then every window's ramps, window-major): the added windows' columns at zero, so
    the stem computes exactly what it did. Also right for AdamW's moments of that weight."""
    if new < old:
        raise ValueError(f"cannot widen {old} windows to {new}")
    if weight.shape[1] != channels * (1 + old):
        raise ValueError(
            f"the stem's first convolution reads {weight.shape[1]} channels, not {channels * (1 + old)}"
            f" ({channels} image channels and {old} windows)"
        )
    out = weight.new_zeros((weight.shape[0], channels * (1 + new), *weight.shape[2:]))
    out[:, : weight.shape[1]] = weight
    return out


def new_stem(in_channels: int, width: int, out_channels: int, *, seed: int | None = None) -> ConvStem:
    """A fresh ``ConvStem`` (output at zero), its blocks drawn from ``seed`` when given, without
    moving torch's global generator."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return ConvStem(in_channels, width, out_channels)
