"""Integrated gradients (captum ``IntegratedGradients``) on the model pixels, from a blurred copy of
the scan (``reference.blurred``), one finding at a time.

An all-air baseline (the previous default) makes every body voxel "evidence", so the map peaked on
the body wall and bone; the blurred scan keeps the patient's own densities and asks what the local
detail adds (its limit: inside a large uniform finding, such as an effusion, blurring changes little,
so the attribution concentrates at the finding's edges). A better reference can be passed where one
exists (``baseline=``: the same patient without the finding). The map is the positive part of the attribution (evidence FOR the finding), as
(165, 144, 144): channel c of RGB image n is model slice 3n + c.
"""

from __future__ import annotations

import numpy as np
import torch
from captum.attr import IntegratedGradients

from hyperct.device import autocast_for
from hyperct.saliency._passes import as_batch, evaluating
from hyperct.saliency.reference import blurred


def integrated_gradients_map(
    model,
    pixel_values: torch.Tensor,
    task: int,
    *,
    baseline: torch.Tensor | None = None,
    n_steps: int = 16,
    internal_batch_size: int = 2,
) -> np.ndarray:
    """Positive integrated gradients of one task's logit w.r.t. the input pixels, as (3n, H, W).

    ``baseline``: the model input to integrate from (default: the blurred scan); e.g. the same
    patient without the finding, where one exists (a phantom's normal twin).
    """
    with evaluating(model) as dev:
        px = as_batch(pixel_values, dev)
        base = blurred(px) if baseline is None else as_batch(baseline, dev)
        task_t = torch.tensor([task], device=dev)

        def logit(x):
            return model(x, task_t, task_chunk=1)[:, 0].float()

        with model.saliency_mode(), autocast_for(dev):
            attr = IntegratedGradients(logit).attribute(
                px, baselines=base, n_steps=n_steps, internal_batch_size=internal_batch_size
            )
    a = attr.detach().float().clamp(min=0)[0]  # (55, 3, H, W)
    return a.reshape(-1, *a.shape[-2:]).cpu().numpy()
