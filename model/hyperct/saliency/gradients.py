"""Plain gradient maps (captum), one backward of the summed task logits for every finding.

* ``token_gradient_maps``: the norm of the logit's gradient at each patch token of an early block's
  input (default block 1), captum ``LayerGradientXActivation`` without the activation factor. Early
  tokens still sit where their patch is; the gradient says which of them the logit responds to.
* ``input_x_gradient_maps``: |input x gradient| (captum ``InputXGradient``) on the model pixels,
  summed over the three slices of each RGB image channel-wise (channel c of image n = model slice 3n+c).
"""

from __future__ import annotations

import numpy as np
import torch
from captum.attr import InputXGradient, LayerGradientXActivation

from hyperct.device import autocast_for
from hyperct.network.backbone import encoder_layers
from hyperct.saliency._passes import as_batch, evaluating, per_task_chunks, summed_logits

TOKEN_GRADIENT_BLOCK = 1


def token_gradient_maps(
    model,
    pixel_values: torch.Tensor,
    tasks: list[int],
    *,
    block: int | None = None,
    task_chunk: int | None = None,
) -> np.ndarray:
    """||d logit / d token|| at the input of ``block``: (len(tasks), 55, h, w)."""
    n_blocks = len(encoder_layers(model.backbone))
    blk = min(TOKEN_GRADIENT_BLOCK, n_blocks - 1) if block is None else int(block)
    with evaluating(model) as dev:
        px = as_batch(pixel_values, dev)

        def one_chunk(sub: torch.Tensor) -> np.ndarray:
            with model.saliency_mode(blk) as tap, autocast_for(dev):
                grad = LayerGradientXActivation(
                    summed_logits(model, sub), tap, multiply_by_inputs=False
                ).attribute(px, target=0)
            norm = grad.detach().float().norm(dim=1)  # (t*55, h, w)
            return norm.reshape(len(sub), px.shape[1], *norm.shape[-2:]).cpu().numpy()

        return per_task_chunks(model, tasks, task_chunk, one_chunk)


def input_x_gradient_maps(
    model, pixel_values: torch.Tensor, tasks: list[int], *, task_chunk: int | None = None
) -> np.ndarray:
    """|input x gradient| on the model pixels: (len(tasks), 165, H, W).

    Every task needs its own gradient w.r.t. the shared input, so this is one backward per task.
    """
    with evaluating(model) as dev:
        px = as_batch(pixel_values, dev)

        def one_task(task: torch.Tensor) -> np.ndarray:  # chunks of one task
            with model.saliency_mode(), autocast_for(dev):
                attr = InputXGradient(summed_logits(model, task)).attribute(
                    px.clone().requires_grad_(True), target=0
                )
            a = attr.detach().float().abs()  # (1, 55, 3, H, W)
            return a.reshape(1, -1, *a.shape[-2:]).cpu().numpy()

        return per_task_chunks(model, tasks, 1, one_task)
