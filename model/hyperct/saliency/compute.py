"""``compute_saliency``: the maps of some findings of one scan with one method of ``METHODS``."""

from __future__ import annotations

import numpy as np

from hyperct.findings import catalogue
from hyperct.loading import LoadedModel
from hyperct.preprocess import Preprocessed, preprocess
from hyperct.saliency.attention import attention_token_maps
from hyperct.saliency.gradcam import gradcam_token_maps
from hyperct.saliency.gradients import input_x_gradient_maps, token_gradient_maps
from hyperct.saliency.integrated import integrated_gradients_map
from hyperct.saliency.maps import SaliencyMaps
from hyperct.saliency.occlusion import occlusion_token_map
from hyperct.saliency.registry import DEFAULT_METHOD, METHODS
from hyperct.volume import CTVolume


def _model(model_or_loaded):
    return model_or_loaded.model if isinstance(model_or_loaded, LoadedModel) else model_or_loaded


def method_maps(model, pixel_values, tasks: list[int], method: str, **kwargs) -> np.ndarray:
    """Model-grid maps of ``tasks`` for one preprocessed scan: (len(tasks), ...) per ``METHODS``."""
    if method == "attention":
        return attention_token_maps(model, pixel_values, tasks, **kwargs)
    if method == "token_gradient":
        return token_gradient_maps(model, pixel_values, tasks, **kwargs)
    if method == "gradcam":
        return gradcam_token_maps(model, pixel_values, tasks, **kwargs)
    if method == "input_x_gradient":
        return input_x_gradient_maps(model, pixel_values, tasks, **kwargs)
    if method == "integrated_gradients":
        return np.stack([integrated_gradients_map(model, pixel_values, t, **kwargs) for t in tasks])
    if method == "occlusion":
        return np.stack([occlusion_token_map(model, pixel_values, t, **kwargs) for t in tasks])
    raise ValueError(f"unknown saliency method {method!r}; choose one of {', '.join(METHODS)}")


def compute_saliency(
    model_or_loaded,
    volume: CTVolume | Preprocessed,
    findings: list[str] | None = None,
    *,
    method: str = DEFAULT_METHOD,
    **kwargs,
) -> SaliencyMaps:
    """Saliency of ``findings`` (default all 25) for one scan with ``method`` (see ``METHODS``)."""
    if method not in METHODS:
        raise ValueError(f"unknown saliency method {method!r}; choose one of {', '.join(METHODS)}")
    model = _model(model_or_loaded)
    pre = volume if isinstance(volume, Preprocessed) else preprocess(volume)
    cat = catalogue()
    ids = list(findings) if findings is not None else cat.ids
    maps = SaliencyMaps(method=method, source_shape=tuple(pre.source_shape), patch=int(model.patch_size))
    if ids:
        arr = method_maps(model, pre.pixel_values, cat.indices(ids), method, **kwargs)
        for fid, m in zip(ids, arr):
            maps.model_maps[fid] = np.asarray(m, dtype=np.float32)
    return maps
