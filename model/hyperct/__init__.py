"""HyperCT engine: low-rank hypernetwork chest CT analysis (model, reader, saliency, training, reports).

Pure PyTorch + NumPy. This package never imports napari or Qt; the viewer lives in ``hyperct_viewer``.
The embedded default weights are a demo trained on synthetic phantoms: not a medical device.
"""

from __future__ import annotations

from importlib import metadata as _metadata

try:  # one version number: the distribution's (pyproject.toml [project] version)
    __version__ = _metadata.version("hyperct-viewer")
except _metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"

DISCLAIMER = "AI output, not a diagnosis."
INTENDED_USE = (
    "Research and demonstration software. The embedded demo model is trained on synthetic phantoms "
    "and has no clinical validity; HyperCT Viewer is not a medical device."
)

__all__ = ["__version__", "DISCLAIMER", "INTENDED_USE"]
