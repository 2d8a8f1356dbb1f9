"""What every saliency method shares: the model in eval mode on its device, tasks in chunks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import torch

from hyperct.device import default_task_chunk


@contextlib.contextmanager
def evaluating(model) -> Iterator[torch.device]:
    """The model in eval mode for the duration (its mode restored after); yields its device."""
    was_training = model.training
    model.eval()
    try:
        yield next(model.parameters()).device
    finally:
        model.train(was_training)


def as_batch(pixel_values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(55, 3, H, W) or (1, 55, 3, H, W) model input -> (1, 55, 3, H, W) on ``device``, no grad."""
    px = pixel_values.detach().to(device)
    if px.ndim == 4:
        px = px[None]
    if px.ndim != 5 or px.shape[0] != 1:
        raise ValueError(f"saliency takes one scan, (55, 3, H, W), got {tuple(pixel_values.shape)}")
    return px


def per_task_chunks(
    model,
    tasks: list[int],
    task_chunk: int | None,
    fn: Callable[[torch.Tensor], np.ndarray],
) -> np.ndarray:
    """``fn(chunk of task indices)`` over the tasks in chunks; results concatenated on axis 0."""
    dev = next(model.parameters()).device
    chunk = task_chunk or default_task_chunk(dev, model)
    out = [fn(torch.as_tensor(tasks[s : s + chunk], device=dev)) for s in range(0, len(tasks), chunk)]
    return np.concatenate(out, axis=0)


def summed_logits(model, tasks: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """f(x) = the sum of the tasks' logits, shape (1, 1): one backward gives every task's gradient
    (tasks are independent rows of the task-major batch)."""

    def f(x: torch.Tensor) -> torch.Tensor:
        return model(x, tasks, task_chunk=len(tasks)).float().sum(dim=1, keepdim=True)

    return f
