"""HU windows before the patch embedding: what a radiologist's window/level does, as input channels.

The model input is 3 adjacent slices per image, each HU clipped to [-1000, 1000] and scaled
linearly (``hyperct.preprocess``). A linear patch embedding of that sees a few hundred bright
voxels of a calcification (> 130 HU) inside a 16 x 16 patch of soft tissue as a shift of ~10 HU of
the patch's weighted sums; fixed nonlinear readouts of the same pixels (the fraction of the patch
above 130 HU, ...) tell such a token from the same place without the finding far better (issue 18,
``benchmarks/token_learnability.py``). ``WindowedPatchEmbedding`` adds those readouts in the form
clinicians use: for each window ``[lo, hi]`` HU, every input channel is also given as
``clamp((HU - lo) / (hi - lo), 0, 1) - 0.5`` (a window/level ramp), and the patch embedding is one
convolution over the original channels and all windowed copies, plus a linear map of each windowed
channel's maximum and mean over the patch (position-free readouts: a few bright voxels anywhere in
the patch). The windows are parameter-free per-pixel maps, the RoPE grid and the token count are
unchanged, and it runs once per image (the LoRA of a HyperCT task does not touch the patch
embedding, so 25 findings share it).

A backbone has windows when its config has ``hu_windows`` (a list of ``[lo, hi]`` pairs; our
extension of the DINOv3 config, absent from DINOv3 releases, which then load as before).
``add_windows`` turns a trained backbone into a windowed one that computes exactly what it did (the
windowed channels' kernels start at zero).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from hyperct.preprocess import HU_MAX, HU_MIN, IMAGENET_MEAN, IMAGENET_STD

# The demo's windows: soft tissue (W400 L40), calcium and metal (from the 130 HU calcium threshold),
# aerated lung (emphysema, air trapping).
DEMO_WINDOWS = ((-160.0, 240.0), (130.0, 530.0), (-1000.0, -500.0))
MAX_WINDOWS = 16  # a bound for untrusted configs: each window adds 3 input channels to the embedding


def check_windows(windows) -> tuple[tuple[float, float], ...]:
    """``windows`` as a tuple of (lo, hi) floats; ValueError naming the first bad one."""
    if isinstance(windows, (str, bytes)) or not isinstance(windows, Sequence):
        raise ValueError(f"hu_windows must be a list of [lo, hi] HU pairs, got {windows!r}"[:200])
    if len(windows) > MAX_WINDOWS:
        raise ValueError(f"hu_windows holds {len(windows)} windows, at most {MAX_WINDOWS}")
    out = []
    for n, w in enumerate(windows):
        if (
            isinstance(w, (str, bytes))
            or not isinstance(w, Sequence)
            or len(w) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in w)
        ):
            raise ValueError(f"hu_windows[{n}] must be a pair of numbers [lo, hi] in HU, got {w!r}"[:200])
        lo, hi = float(w[0]), float(w[1])
        if not (HU_MIN <= lo < hi <= HU_MAX):
            raise ValueError(
                f"hu_windows[{n}] = [{lo:g}, {hi:g}]: need {HU_MIN:g} <= lo < hi <= {HU_MAX:g} HU "
                "(the model input is clipped to that range)"
            )
        out.append((lo, hi))
    return tuple(out)


class WindowedPatchEmbedding(nn.Conv2d):
    """The patch embedding convolution over the input channels and their HU-windowed copies, plus a
    linear map of each windowed channel's maximum and mean over the patch.

    The convolution keeps the names of the plain embedding (``weight``, ``bias``); ``weight`` has
    ``in_channels * (1 + len(windows))`` input channels: the original ones first, then each window's.
    ``pooled`` (``Linear(2 * in_channels * len(windows), out)``) reads the patch maximum of every
    windowed channel (is there ANY voxel in the window: a calcification's few bright voxels,
    wherever in the patch) and its mean (how much of the patch), both independent of where in the
    patch they are, which a linear kernel cannot be for the maximum and learns slowly for the mean.
    """

    def __init__(self, in_channels: int, out_channels: int, patch: int, windows):
        windows = check_windows(windows)
        super().__init__(in_channels * (1 + len(windows)), out_channels, kernel_size=patch, stride=patch)
        self.image_channels = in_channels
        self.windows = windows
        self.pooled = nn.Linear(2 * in_channels * len(windows), out_channels)
        self.register_module("stem", None)  # a ConvStem (hyperct.network.conv_stem), if any
        if in_channels != len(IMAGENET_MEAN):
            raise ValueError(
                f"HU windows need the {len(IMAGENET_MEAN)}-channel model input, got {in_channels}"
            )

    def windowed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised input -> (N, 3 * (1 + W), H, W): ``windowed_input``."""
        return windowed_input(pixel_values, self.windows)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # = conv(windowed_input) + pooled(patch_max_mean of its windowed channels), computed without
        # the concatenated copy: the input's and the ramps' kernels apart, and each ramp's patch
        # maximum as the ramp of the input's patch maximum (a ramp never falls as the value rises).
        # ~2.3x faster on a CPU (the embedding was ~80 % of a frozen windowed backbone's forward).
        c, p = self.image_channels, int(self.kernel_size[0])
        ramps = window_ramps(pixel_values, self.windows)  # float32
        peak = window_ramps(F.max_pool2d(pixel_values.float(), p, p), self.windows)
        stats = torch.cat([peak, F.avg_pool2d(ramps, p, p)], dim=1).to(pixel_values.dtype)
        pooled = self.pooled(stats.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (N, D, h, w)
        ramps = ramps.to(pixel_values.dtype)
        out = F.conv2d(pixel_values, self.weight[:, :c], self.bias, stride=p)
        out = out + F.conv2d(ramps, self.weight[:, c:], None, stride=p) + pooled
        if self.stem is not None:
            out = out + self.stem(torch.cat([pixel_values, ramps], dim=1))
        return out


def window_ramps(pixel_values: torch.Tensor, windows) -> torch.Tensor:
    """(N, 3, H, W) normalised input -> (N, 3 * W, H, W) float32: each window's ramp
    ``clamp((HU - lo) / (hi - lo), 0, 1) - 0.5`` of every channel (window-major), as one multiply-add
    and a clamp per value (the HU is affine in the normalised input)."""
    k = len(windows)
    lo = torch.tensor([w[0] for w in windows], dtype=torch.float64).view(k, 1)
    width = torch.tensor([w[1] - w[0] for w in windows], dtype=torch.float64).view(k, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, -1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, -1)
    span = HU_MAX - HU_MIN
    shape = (1, k, mean.shape[1], 1, 1)
    scale = (std * span / width).to(torch.float32).view(shape).to(pixel_values.device)
    offset = ((mean * span + HU_MIN - lo) / width).to(torch.float32).view(shape).to(pixel_values.device)
    ramps = torch.addcmul(offset, pixel_values.float()[:, None], scale)  # (N, W, 3, H, W)
    return ramps.clamp_(0.0, 1.0).sub_(0.5).flatten(1, 2)


def windowed_input(pixel_values: torch.Tensor, windows) -> torch.Tensor:
    """(N, 3, H, W) normalised input -> (N, 3 * (1 + W), H, W): the input, then each window's ramps
    (``window_ramps``). Computed in float32 whatever the input's dtype (no buffers: ``.to(bfloat16)``
    would round the window edges and the normalisation constants)."""
    return torch.cat([pixel_values, window_ramps(pixel_values, windows).to(pixel_values.dtype)], dim=1)


def patch_max_mean(channels: torch.Tensor, patch) -> torch.Tensor:
    """(N, C, H, W) -> (N, 2C, h, w): each channel's maximum over every patch, then its mean."""
    return torch.cat([F.max_pool2d(channels, patch, patch), F.avg_pool2d(channels, patch, patch)], dim=1)


def install_windows(backbone, windows, conv_stem: int | None = None) -> None:
    """Replace ``backbone``'s patch embedding by a (freshly initialised) windowed one, in place; with
    a ``hyperct.network.conv_stem.ConvStem`` of width ``conv_stem`` when given."""
    from hyperct.network.conv_stem import ConvStem, check_stem_width

    old = backbone.embeddings.patch_embeddings
    channels = getattr(old, "image_channels", old.in_channels)  # (a windowed one: its image's)
    new = WindowedPatchEmbedding(channels, old.out_channels, int(old.kernel_size[0]), windows)
    if conv_stem:
        check_stem_width(conv_stem, int(old.kernel_size[0]))
        new.stem = ConvStem(new.in_channels, conv_stem, new.out_channels)
    backbone.embeddings.patch_embeddings = new.to(device=old.weight.device, dtype=old.weight.dtype)
    backbone.config.hu_windows = [list(w) for w in new.windows]


def add_windows(backbone, windows):
    """A copy of a plain (window-less) ``backbone`` with HU windows that computes exactly what it did:
    the original channels keep their kernels, each window's and the pooled map start at zero."""
    if getattr(backbone.config, "hu_windows", None):
        raise ValueError("this backbone has HU windows already")
    return _with_more_windows(backbone, windows)


def _with_more_windows(backbone, windows):
    """A copy of ``backbone`` with ``windows`` after its own (none for a plain one), the new windows'
    kernels and pooled weights at zero (``widen_window_tensors``), and its conv stem's, if any
    (``widen_stem_input``): it computes exactly what it did."""
    import copy

    from hyperct.network.conv_stem import widen_stem_input

    old = backbone.embeddings.patch_embeddings
    stem = getattr(old, "stem", None)
    had = list(getattr(old, "windows", ()))
    out = copy.deepcopy(backbone)
    install_windows(out, [*had, *windows], stem.width if stem is not None else None)
    new = out.embeddings.patch_embeddings
    if stem is not None:  # the stem reads every window: its first convolution gets zero columns
        state = {k: v.detach().clone() for k, v in stem.state_dict().items()}
        first = "blocks.0.weight"
        state[first] = widen_stem_input(state[first], len(had), len(new.windows), old.image_channels)
        new.stem.load_state_dict(state)
    pooled = old.pooled.weight.data if had else old.weight.new_zeros((old.weight.shape[0], 0))
    w, q = widen_window_tensors(old.weight.data, pooled, len(had), len(new.windows))
    with torch.no_grad():
        new.weight.copy_(w)
        new.bias.copy_(old.bias)
        new.pooled.weight.copy_(q)
        new.pooled.bias.copy_(old.pooled.bias if had else torch.zeros_like(new.pooled.bias))
    return out


def widen_window_tensors(
    weight: torch.Tensor, pooled: torch.Tensor, old: int, new: int, channels: int = len(IMAGENET_MEAN)
) -> tuple[torch.Tensor, torch.Tensor]:
    """A windowed patch embedding's tensors for ``old`` windows -> the same for ``new`` >= ``old``
    windows, the added windows (appended after the others) weighted zero: the convolution's
    ``weight`` (D, channels * (1 + old), p, p) and ``pooled.weight`` (D, 2 * channels * old, laid out
    as every window's patch maxima, then every window's means). Also right for AdamW's moments of
    those tensors (a new column has none)."""
    if new < old:
        raise ValueError(f"cannot widen {old} windows to {new}")
    c = channels
    w = weight.new_zeros((weight.shape[0], c * (1 + new), *weight.shape[2:]))
    w[:, : c * (1 + old)] = weight
    q = pooled.new_zeros((pooled.shape[0], 2 * c * new))
    q[:, : c * old] = pooled[:, : c * old]  # the old windows' maxima
    q[:, c * new : c * (new + old)] = pooled[:, c * old :]  # and their means
    return w, q


def extend_windows(backbone, windows):
    """A copy of a windowed ``backbone`` with ``windows`` appended to its HU windows that computes
    exactly what it did (the new windows' kernels and pooled weights start at zero)."""
    if not getattr(backbone.config, "hu_windows", None):
        raise ValueError("this backbone has no HU windows: use add_windows")
    return _with_more_windows(backbone, windows)
