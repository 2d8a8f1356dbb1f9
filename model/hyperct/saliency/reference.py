"""What the model-agnostic methods compare the scan with: the same scan with its detail removed.

A blurred copy of the model input keeps each region's mean density (so "removing" a patch does not
paint air or water into the body, which the model would read as a finding of its own) and removes
the local structure a finding adds. Integrated gradients start from it and occlusion pastes it in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BLUR_SIGMA_PX = 6.0  # model pixels (~15 mm at a 350 mm field of view): wider than a token's detail


def blurred(px: torch.Tensor, sigma: float = BLUR_SIGMA_PX) -> torch.Tensor:
    """Separable Gaussian blur of every image channel of a (..., H, W) model input."""
    radius = int(round(2 * sigma))
    k = torch.exp(
        -0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32, device=px.device) / sigma) ** 2
    )
    k = (k / k.sum()).to(px.dtype)
    x = px.reshape(-1, 1, *px.shape[-2:])
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
    return x.reshape(px.shape)
