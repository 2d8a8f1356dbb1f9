"""HyperCT engine: low-rank hypernetwork chest CT analysis (model, reader, saliency, training, reports).

Pure PyTorch + NumPy. This package never imports napari or Qt; the viewer lives in ``hyperct_viewer``.
The embedded default weights are a demo trained on synthetic phantoms: not a medical device.
"""

from __future__ import annotations

__version__ = "0.1.0"

DISCLAIMER = "AI output, not a diagnosis."
INTENDED_USE = (
    "Research and demonstration software. The embedded demo model is trained on synthetic phantoms "
    "and has no clinical validity; HyperCT Viewer is not a medical device."
)

__all__ = ["__version__", "DISCLAIMER", "INTENDED_USE"]
