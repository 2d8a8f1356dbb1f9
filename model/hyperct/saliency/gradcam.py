"""Grad-CAM (captum ``LayerGradCam``) on the patch tokens of the last block, weighted per volume.

Grad-CAM weights each channel of a layer by its gradient averaged over the layer's spatial axes and
sums the weighted channels. On this ViT the "image" Grad-CAM sees is one RGB slice triplet (9 x 9
tokens): per-image weights make every image's map a different mix of channels, and a large part of
the map becomes a per-image offset (measured: 37 % of a map's variance, the stripes in coronal
views). Here the tap presents each VOLUME to captum as one (D, 55, 9, 9) layer, so the channel
weights are averaged over the whole scan, as a CNN's Grad-CAM averages over its whole image.
The tap reads the output of the last block's first LayerNorm (``norm1``: what its attention reads)
by default; ``site="input"`` taps the residual stream (the last block's input) instead, and
``per_volume=False`` gives captum's per-image weights, for comparison.
"""

from __future__ import annotations

import numpy as np
import torch
from captum.attr import LayerGradCam

from hyperct.device import autocast_for
from hyperct.saliency._passes import as_batch, evaluating, per_task_chunks, summed_logits

GRADCAM_SITE = "norm1"


def gradcam_token_maps(
    model,
    pixel_values: torch.Tensor,
    tasks: list[int],
    *,
    task_chunk: int | None = None,
    block: int | None = None,
    site: str = GRADCAM_SITE,
    per_volume: bool = True,
) -> np.ndarray:
    """Grad-CAM maps (len(tasks), 55, h, w), ReLU'd, not normalised. ``block``: tap an earlier block."""
    with evaluating(model) as dev:
        px = as_batch(pixel_values, dev)
        n_img = px.shape[1]

        def one_chunk(sub: torch.Tensor) -> np.ndarray:
            with model.saliency_mode(block, site=site, per_volume=per_volume) as tap, autocast_for(dev):
                attr = LayerGradCam(summed_logits(model, sub), tap).attribute(
                    px, target=0, relu_attributions=True
                )
            return attr.detach().float().reshape(len(sub), n_img, *attr.shape[-2:]).cpu().numpy()

        return per_task_chunks(model, tasks, task_chunk, one_chunk)
