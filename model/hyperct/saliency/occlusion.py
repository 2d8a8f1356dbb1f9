"""Occlusion (captum ``Occlusion``): how much a finding's logit drops when one 16 x 16 patch of one
RGB slice triplet is replaced by the blurred scan (``reference.blurred``). Model-agnostic and slow
(one image pass per token), the reference the gradient methods are checked against.

The model scores a scan from the mean of its images' CLS features, and an image's CLS depends on that
image alone, so occluding a patch of image n only changes image n's CLS. Each image is therefore
occluded on its own (81 perturbed copies per pass), and the logit is recomputed from the other
images' unchanged features: exactly the full model's output for the occluded scan. Blurring keeps a patch's mean density, so a patch
inside a large uniform finding (an effusion) still looks like that finding when "removed": such
findings score low everywhere but at their edges unless a better ``baseline`` is passed.
"""

from __future__ import annotations

import numpy as np
import torch
from captum.attr import Occlusion

from hyperct.device import autocast_for
from hyperct.saliency._passes import as_batch, evaluating
from hyperct.saliency.reference import blurred


@torch.no_grad()
def occlusion_token_map(
    model, pixel_values: torch.Tensor, task: int, *, baseline: torch.Tensor | None = None
) -> np.ndarray:
    """Logit drop when each token is occluded: (55, h, w) (positive = the patch supports the finding).

    ``baseline``: what an occluded patch shows (default: the blurred scan; e.g. the same patient
    without the finding where one exists).
    """
    with evaluating(model) as dev, autocast_for(dev):
        px = as_batch(pixel_values, dev)
        n_img = px.shape[1]
        patch = model.patch_size
        side = px.shape[-1] // patch
        task_t = torch.tensor([task], device=dev)
        base = blurred(px) if baseline is None else as_batch(baseline, dev)

        def cls_of(images: torch.Tensor) -> torch.Tensor:  # (M, 3, H, W) -> (M, D), each image alone
            return model.pooled_features(images[:, None], task_t)[:, 0].float()

        cls = cls_of(px[0])  # (55, D)
        total = cls.sum(dim=0)
        out = np.zeros((n_img, side, side), np.float32)
        for n in range(n_img):

            def logit_with(images: torch.Tensor, n=n) -> torch.Tensor:
                feats = (total - cls[n] + cls_of(images)) / n_img
                return model.head(feats.to(model.head[0].weight.dtype)).float()[:, 0]

            attr = Occlusion(logit_with).attribute(
                px[0, n][None],
                sliding_window_shapes=(3, patch, patch),
                strides=(3, patch, patch),
                baselines=base[0, n][None],
                perturbations_per_eval=side * side,
            )
            out[n] = attr[0, 0, patch // 2 :: patch, patch // 2 :: patch].float().cpu().numpy()
        return out
