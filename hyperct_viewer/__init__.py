"""HyperCT Viewer: the napari plugin (reader, sample data, Findings and Task Embeddings widgets).

It only wires the ``hyperct`` engine to napari layers and widgets; it holds no model or imaging logic.
"""

from hyperct import __version__  # one distribution, one version (package metadata)

__all__ = ["__version__"]
