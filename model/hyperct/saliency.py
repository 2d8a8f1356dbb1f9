"""Saliency maps per finding, with captum, on the CT's own voxel grid.

Grad-CAM (default): captum ``LayerGradCam`` on the 9 x 9 patch-token grid at the INPUT of the last
transformer block (= output of block L-1; CLS and register tokens excluded). The patch tokens of the
last block's own output would get zero gradient: only the CLS token feeds the head. Gradients
run back through the last block only (the LoRA factors are cached constants and nothing upstream
requires grad), and one backward of the summed task scores gives every task's map at once: tasks
are independent along the batch (task-major rows), so d(sum)/d(activations of task k) is task k's
own gradient. (``block=`` taps an earlier block's input instead, to compare layers; gradients then
run back through the blocks from there on.)

Integrated gradients (for comparison): captum ``IntegratedGradients`` on the model input pixels,
one finding at a time, from an all-air baseline (-1000 HU). Channel c of RGB image n is model slice
3n + c, so the attribution is directly a (165, 144, 144) map.

Maps are kept on the model grid (tiny for Grad-CAM: 55 x 9 x 9 per finding) and resampled on demand
to the CT's canonical voxel grid through the inverse of the preprocessing, normalised per volume
to [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from captum.attr import IntegratedGradients, LayerGradCam

from hyperct.findings import catalogue
from hyperct.inference import autocast_for, default_task_chunk
from hyperct.loading import LoadedModel
from hyperct.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    N_IMAGES,
    N_SLICES,
    Preprocessed,
    map_to_grid,
    model_to_source_coords,
    preprocess,
)
from hyperct.results import SaliencySummary
from hyperct.volume import CTVolume

METHODS = {
    "gradcam": "Grad-CAM (last-block input tokens)",
    "integrated_gradients": "Integrated gradients (input pixels)",
}


@dataclass
class SaliencyMaps:
    """Saliency of some findings for one scan, on the model grid, mapped back on demand."""

    method: str
    source_shape: tuple[int, int, int]
    model_maps: dict[str, np.ndarray] = field(default_factory=dict)  # (55, 9, 9) or (165, 144, 144)

    def __contains__(self, finding_id: str) -> bool:
        return finding_id in self.model_maps

    def update(self, other: SaliencyMaps) -> None:
        if other.method != self.method or other.source_shape != self.source_shape:
            raise ValueError("cannot merge saliency maps of different methods or volumes")
        self.model_maps.update(other.model_maps)

    def volume_map(self, finding_id: str, dtype=np.float32) -> np.ndarray:
        """The map on the CT's canonical voxel grid, normalised to [0, 1] (0 everywhere if flat)."""
        grid = map_to_grid(self.model_maps[finding_id], self.source_shape)
        np.maximum(grid, 0, out=grid)
        peak = float(grid.max())
        if peak > 0:
            grid /= peak
        return grid.astype(dtype, copy=False)

    def peak_index(self, finding_id: str) -> tuple[int, int, int]:
        """Canonical voxel index (k, j, i) of the map's maximum (from the model-grid map)."""
        m = self.model_maps[finding_id]
        if m.shape[0] == N_IMAGES:
            m = np.repeat(m, 3, axis=0)
        kk, jj, ii = np.unravel_index(int(np.argmax(m)), m.shape)
        coords = [
            model_to_source_coords(n, s)[x] for n, s, x in zip(m.shape, self.source_shape, (kk, jj, ii))
        ]
        return tuple(int(np.clip(round(c), 0, s - 1)) for c, s in zip(coords, self.source_shape))

    def summary(self, finding_id: str, volume: CTVolume) -> SaliencySummary:
        k, j, i = self.peak_index(finding_id)
        lps = volume.index_to_lps([k, j, i])
        return SaliencySummary(
            method=self.method,
            key_slice=k,
            peak_index=(k, j, i),
            peak_lps_mm=tuple(round(float(v), 2) for v in lps),
        )


def _model_and_device(model_or_loaded) -> tuple[torch.nn.Module, torch.device]:
    if isinstance(model_or_loaded, LoadedModel):
        return model_or_loaded.model, model_or_loaded.device
    dev = next(model_or_loaded.parameters()).device
    return model_or_loaded, dev


def gradcam_token_maps(
    model,
    pixel_values: torch.Tensor,
    tasks: list[int],
    *,
    task_chunk: int | None = None,
    block: int | None = None,
) -> np.ndarray:
    """Grad-CAM on the last block's input tokens: (len(tasks), 55, 9, 9), ReLU'd, not normalised.

    ``block``: tap the input of this block instead (0-based; default the last), for comparison.
    """
    dev = next(model.parameters()).device
    px = pixel_values.to(dev)
    if px.ndim == 4:
        px = px[None]
    chunk = task_chunk or default_task_chunk(dev, model)
    out = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(tasks), chunk):
            sub = torch.as_tensor(tasks[start : start + chunk], device=dev)

            def summed(x, sub=sub):
                return model(x, sub, task_chunk=len(sub)).float().sum(dim=1, keepdim=True)

            with model.saliency_mode(block) as tap, autocast_for(dev):
                attr = LayerGradCam(summed, tap).attribute(px, target=0, relu_attributions=True)
            n_img = px.shape[1]
            out.append(attr.detach().float().reshape(len(sub), n_img, *attr.shape[-2:]).cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out, axis=0)


def integrated_gradients_map(
    model, pixel_values: torch.Tensor, task: int, *, n_steps: int = 16, internal_batch_size: int = 2
) -> np.ndarray:
    """|Integrated gradients| of one task's logit w.r.t. the input pixels, as (165, 144, 144)."""
    dev = next(model.parameters()).device
    px = pixel_values.to(dev)
    if px.ndim == 4:
        px = px[None]
    mean = torch.tensor(IMAGENET_MEAN, device=dev).view(1, 1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=dev).view(1, 1, 3, 1, 1)
    baseline = ((0.0 - mean) / std).expand_as(px).contiguous()  # -1000 HU (air) everywhere
    task_t = torch.tensor([task], device=dev)

    def logit(x):
        return model(x, task_t, task_chunk=1)[:, 0].float()

    was_training = model.training
    model.eval()
    try:
        with model.saliency_mode(), autocast_for(dev):
            attr = IntegratedGradients(logit).attribute(
                px, baselines=baseline, n_steps=n_steps, internal_batch_size=internal_batch_size
            )
    finally:
        model.train(was_training)
    a = attr.detach().float().abs()[0]  # (55, 3, 144, 144): channel c of image n = model slice 3n + c
    return a.reshape(N_SLICES, *a.shape[-2:]).cpu().numpy()


def compute_saliency(
    model_or_loaded,
    volume: CTVolume | Preprocessed,
    findings: list[str] | None = None,
    *,
    method: str = "gradcam",
    **kwargs,
) -> SaliencyMaps:
    """Saliency of ``findings`` (default all 25) for one scan. Grad-CAM does all in one batched backward."""
    if method not in METHODS:
        raise ValueError(f"unknown saliency method {method!r}; choose one of {', '.join(METHODS)}")
    model, _ = _model_and_device(model_or_loaded)
    pre = volume if isinstance(volume, Preprocessed) else preprocess(volume)
    cat = catalogue()
    ids = list(findings) if findings is not None else cat.ids
    tasks = cat.indices(ids)
    maps = SaliencyMaps(method=method, source_shape=tuple(pre.source_shape))
    if method == "gradcam":
        token_maps = gradcam_token_maps(model, pre.pixel_values, tasks, **kwargs)
        for fid, m in zip(ids, token_maps):
            maps.model_maps[fid] = m.astype(np.float32)
    else:
        for fid, t in zip(ids, tasks):
            maps.model_maps[fid] = integrated_gradients_map(model, pre.pixel_values, t, **kwargs).astype(
                np.float32
            )
    return maps
