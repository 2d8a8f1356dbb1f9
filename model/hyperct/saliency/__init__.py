"""Saliency maps per finding, on the CT's own voxel grid: where the model's evidence for a finding is.

Methods (``METHODS``; the default is the one the saliency benchmark measured best, see
``benchmarks/bench_saliency.py`` and the model card):

* ``attention`` (default): gradient-weighted attention relevance (Chefer et al., ICCV 2021),
  ``attention.py`` (also the default until demo v0.4; the token gradient from v0.4 to v0.7);
* ``gradcam``: captum Grad-CAM on the last block's tokens with per-volume channel weights,
  ``gradcam.py``;
* ``token_gradient``: gradient norm per patch token at an early block (fast),
  ``gradients.py``;
* ``input_x_gradient``: captum |input x gradient| on the pixels, ``gradients.py``;
* ``integrated_gradients``: captum integrated gradients from the blurred scan, ``integrated.py``;
* ``occlusion``: captum occlusion of each patch by the blurred scan (slow), ``occlusion.py``.

Token methods give (55, G, G) maps (G = 144 / patch), pixel methods (165, 144, 144);
``SaliencyMaps`` maps them back through the inverse of the preprocessing and defines the one peak
(``maps.peak_index``) that the viewer, the reports and the benchmark use. The token methods compute
all requested findings with one backward pass (tasks are independent rows of the batch).
"""

from __future__ import annotations

import importlib

from hyperct.saliency.registry import DEFAULT_METHOD, METHODS, Method

# Everything else loads on first use (torch, captum): the registry above is cheap to import.
_LAZY = {
    "SaliencyMaps": "maps",
    "body_mask": "maps",
    "peak_index": "maps",
    "peak_token": "maps",
    "token_grid": "maps",
    "compute_saliency": "compute",
    "method_maps": "compute",
    "attention_token_maps": "attention",
    "gradcam_token_maps": "gradcam",
    "input_x_gradient_maps": "gradients",
    "token_gradient_maps": "gradients",
    "integrated_gradients_map": "integrated",
    "occlusion_token_map": "occlusion",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"hyperct.saliency.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DEFAULT_METHOD", "METHODS", "Method", *_LAZY]
