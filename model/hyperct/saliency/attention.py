"""Gradient-weighted attention relevance (Chefer, Gur and Wolf, "Generic Attention-model
Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers", ICCV 2021, its rule for
self-attention encoders).

Per image, starting from R = I (tokens x tokens), every block b updates R <- R + mean_heads((dy/dA_b
* A_b)^+) R, where A_b are the block's attention probabilities and y the finding's logit. The CLS row
of R over the patch tokens is the map: how much each patch, through every block's attention weighted
by how the logit responds to it, feeds the CLS token the head reads. Attention runs in eager mode
during this pass only (``HyperCT.recording_attention``). One backward of the summed task logits
gives every task's map (tasks are independent rows of the batch); the LoRA factors are constants.
"""

from __future__ import annotations

import numpy as np
import torch

from hyperct.device import autocast_for
from hyperct.saliency._passes import as_batch, evaluating, per_task_chunks


def relevance_from_attention(attentions: list[torch.Tensor], gradients: list[torch.Tensor]) -> torch.Tensor:
    """Chefer's rule over the blocks: (N, heads, T, T) probabilities and their gradients -> R (N, T, T)."""
    n, _, t, _ = attentions[0].shape
    rel = torch.eye(t, dtype=torch.float32, device=attentions[0].device).expand(n, t, t).clone()
    for a, g in zip(attentions, gradients):
        cam = (a.float() * g.float()).clamp(min=0).mean(dim=1)
        rel = rel + torch.bmm(cam, rel)
    return rel


def attention_token_maps(
    model, pixel_values: torch.Tensor, tasks: list[int], *, task_chunk: int | None = None
) -> np.ndarray:
    """Relevance of every patch token for each task: (len(tasks), 55, h, w), >= 0, not normalised."""
    with evaluating(model) as dev:
        px = as_batch(pixel_values, dev)
        n_img = px.shape[1]
        side = px.shape[-1] // model.patch_size

        def one_chunk(sub: torch.Tensor) -> np.ndarray:
            x = px.clone().requires_grad_(True)
            with model.saliency_mode(), model.recording_attention() as attn, autocast_for(dev):
                logits = model(x, sub, task_chunk=len(sub))
                grads = torch.autograd.grad(logits.float().sum(), attn)
            rel = relevance_from_attention(attn, grads)
            patches = rel[:, 0, model.n_prefix :]  # CLS row over the patch tokens
            return patches.reshape(len(sub), n_img, side, side).detach().cpu().numpy()

        return per_task_chunks(model, tasks, task_chunk, one_chunk)
